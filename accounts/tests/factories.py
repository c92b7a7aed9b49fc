from __future__ import annotations

import factory

from accounts.choices import CourseRole, Role
from accounts.models import Course, CourseMembership, School, User


class SchoolFactory(factory.django.DjangoModelFactory[School]):
    class Meta:
        model = School
        django_get_or_create = ("slug",)

    name = factory.Sequence(lambda n: f"School {n}")
    slug = factory.Sequence(lambda n: f"school-{n}")


class UserFactory(factory.django.DjangoModelFactory[User]):
    class Meta:
        model = User
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    role = Role.STUDENT
    school = factory.SubFactory(SchoolFactory)
    password = factory.PostGenerationMethodCall("set_password", "password")

    @factory.post_generation
    def save_password(obj: User, create: bool, extracted: object, **kwargs: object) -> None:
        if create:
            obj.save()


class CourseFactory(factory.django.DjangoModelFactory[Course]):
    class Meta:
        model = Course

    school = factory.SubFactory(SchoolFactory)
    name = factory.Sequence(lambda n: f"Course {n}")


class MembershipFactory(factory.django.DjangoModelFactory[CourseMembership]):
    class Meta:
        model = CourseMembership

    course = factory.SubFactory(CourseFactory)
    user = factory.SubFactory(UserFactory)
    role = CourseRole.STUDENT
