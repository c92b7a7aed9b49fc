"""Usage: desktop hours per student, course, template and school, and the hosts' load."""
