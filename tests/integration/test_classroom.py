"""Issue 8 in a real browser: a teacher deploys a template, a student starts and opens it.

Headless Chromium (Debian's, through Selenium and chromedriver) uses the pages as people
do: the real sign-in page, the course page's deploy form, sign out, the student's
dashboard, the Start button, the "Open in the browser" link. Behind it: the real ASGI
application in Daphne, the Redis channel layer carrying live status to the pages'
websockets, the real tasks, and a real TCG guest made from the demo template.

The tasks the services schedule wait in a queue until the test runs them, in this
process (a worker of concurrency one). So the test knows that a status the page shows
after that came over the websocket: nothing else asks the server after the click was
answered, and a marker set on `window` proves the page never reloaded.

Screenshots of the main pages (sign-in, course page with the live desktop, install media,
the dashboard on a laptop and on a phone, the viewer) are kept in `test-artifacts/`.
"""

from __future__ import annotations

import base64
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from accounts.choices import CourseRole, Role
from accounts.tests.factories import CourseFactory, MembershipFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Desktop
from desktops.services.domains import serial_log_path
from hypervisors.drivers import libvirt_driver
from hypervisors.guest_image import GUEST_READY_MARKER
from isard.core.tasks import TaskCall
from tests.integration.browser import (
    ARTIFACTS,
    AsgiServer,
    canvas_matches_screen,
    direct_framebuffer,
    new_chromium,
    sign_in,
    vga_text,
    wait_for_state,
)
from tests.integration.conftest import SYSTEM_URI, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.django_db(transaction=True)]

PASSWORD = "a classroom passphrase"


class TaskQueue:
    """Tasks the services schedule, held until the test runs them (in order, here)."""

    def __init__(self) -> None:
        self.waiting: list[tuple[str, dict[str, Any]]] = []
        self.done: list[str] = []
        self.lock = threading.Lock()

    def send(self, call: TaskCall, **_: Any) -> None:
        if call.options.get("countdown"):
            return  # retries and later checks: not part of this story
        with self.lock:  # Daphne's threads schedule tasks too
            self.waiting.append((call.name, dict(call.kwargs)))

    def run_all(self) -> list[str]:
        """Run every waiting task, and those they schedule in turn; return their names."""
        from isard.celery import app

        app.loader.import_default_modules()
        ran: list[str] = []
        while True:
            with self.lock:
                if not self.waiting:
                    return ran
                task_name, task_kwargs = self.waiting.pop(0)
            app.tasks[task_name](**task_kwargs)
            ran.append(task_name)
            self.done.append(task_name)


@pytest.fixture
def queued_tasks(monkeypatch: pytest.MonkeyPatch) -> TaskQueue:
    from isard.core import tasks

    queue = TaskQueue()
    monkeypatch.setattr(tasks, "send_task", queue.send)
    return queue


@pytest.fixture
def browser(tmp_path: Path) -> Iterator[Any]:
    driver = new_chromium(tmp_path / "chromium-profile", 1280, 900)
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture
def no_guest_left_behind() -> Iterator[None]:
    yield
    for desktop in Desktop.objects.all():
        libvirt_driver.undefine_domain(SYSTEM_URI, desktop.domain_name)


# --- what a page shows --------------------------------------------------------------------------

#: Problems a person using a keyboard or a screen reader, or with weak eyes, would meet:
#: form controls without a label, buttons and links without a name, text whose contrast
#: with its background is under WCAG AA (4.5:1, or 3:1 for large text), and an element
#: wider than the window (cut off on a phone).
AUDIT_JS = (Path(__file__).parent / "audit.js").read_text()


def audit(driver: Any) -> list[str]:
    return list(driver.execute_script(AUDIT_JS))


def keep(driver: Any, name: str) -> None:
    """A screenshot of the whole page as it is (not just the window), kept as an artifact."""
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": size["width"], "height": size["height"], "scale": 1}
    shot = driver.execute_cdp_cmd(
        "Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip}
    )
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / f"{name}.png").write_bytes(base64.b64decode(shot["data"]))


@contextmanager
def phone_screen(driver: Any) -> Iterator[None]:
    """The page as a phone shows it: 390x844 CSS pixels, mobile viewport rules."""
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
    )
    try:
        assert driver.execute_script("return innerWidth") == 390
        yield
    finally:
        driver.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def focused_text(driver: Any) -> str:
    return str(driver.execute_script("return document.activeElement.textContent.trim()"))


def find(driver: Any, css: str) -> Any:
    from selenium.webdriver.common.by import By

    return driver.find_element(By.CSS_SELECTOR, css)


def wait_until(driver: Any, condition: Any, what: str, timeout: float = 60) -> Any:
    from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
    from selenium.webdriver.support.ui import WebDriverWait

    # A live page replaces what it redraws: an element found a moment ago may be gone by
    # the time it is read, and the condition is simply asked again.
    waiting = WebDriverWait(
        driver, timeout, poll_frequency=0.2, ignored_exceptions=(StaleElementReferenceException,)
    )
    try:
        return waiting.until(lambda d: condition(d))
    except TimeoutException:
        keep(driver, "failed")
        page = driver.find_element("tag name", "body").text[:2000]
        pytest.fail(f"waited {timeout:.0f} s for {what}; at {driver.current_url}:\n{page}")


def card_status(driver: Any, desktop: Desktop) -> str:
    return str(find(driver, f"#desktop-{desktop.pk} [data-role=status]").text)


def path_of(driver: Any) -> str:
    return str(driver.execute_script("return location.pathname"))


def mark_page(driver: Any) -> None:
    """A marker that only this page load has: a reload or a navigation loses it."""
    driver.execute_script("window.__sameLoad = 'still here'")


def page_never_reloaded(driver: Any) -> bool:
    return bool(driver.execute_script("return window.__sameLoad === 'still here'"))


def sign_in_with_keyboard(driver: Any, server: AsgiServer, username: str) -> None:
    """The real sign-in page, used as a keyboard user does: type, Tab, type, Enter."""
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    assert path_of(driver) == "/accounts/login/"
    find(driver, "#id_username").click()
    ActionChains(driver).send_keys(username, Keys.TAB, PASSWORD, Keys.ENTER).perform()
    wait_until(driver, lambda d: path_of(d) != "/accounts/login/", f"{username} to sign in")


# --- the story ---------------------------------------------------------------------------------


def test_a_teacher_deploys_to_the_class_and_a_student_starts_and_opens_the_desktop_in_chromium(
    demo_template: Any,
    spice_tls: Any,
    platform_server: AsgiServer,
    queued_tasks: TaskQueue,
    browser: Any,
    no_guest_left_behind: None,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import Select

    course = CourseFactory.create(name="1A")
    teacher = UserFactory.create(
        username="tere", first_name="Tere", role=Role.TEACHER, school=course.school
    )
    student = UserFactory.create(
        username="ana", first_name="Ana", role=Role.STUDENT, school=course.school
    )
    for person in (teacher, student):
        person.set_password(PASSWORD)
        person.save()
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    MembershipFactory.create(course=course, user=student, role=CourseRole.STUDENT)
    base = platform_server.base_url

    # The teacher asks for the course list and is sent to the sign-in page first.
    browser.get(f"{base}/courses/")
    assert path_of(browser) == "/accounts/login/"
    assert audit(browser) == []
    keep(browser, "sign-in")
    find(browser, "#id_username").send_keys("tere")
    find(browser, "#id_password").send_keys(PASSWORD)
    find(browser, "form button[type=submit]").click()
    wait_until(browser, lambda d: path_of(d) == "/courses/", "the course list")
    with phone_screen(browser):
        assert audit(browser) == []

    browser.find_element(By.LINK_TEXT, "1A").click()
    wait_until(browser, lambda d: path_of(d) == f"/courses/{course.pk}/", "the course page")
    Select(find(browser, "#deploy-template")).select_by_visible_text(demo_template.name)
    find(browser, "form.deploy button[type=submit]").click()
    wait_until(
        browser,
        lambda d: "1 desktop(s) are being created" in find(d, ".messages").text,
        "the deployment to be made",
    )
    desktop = Desktop.objects.get(owner=student, course=course)
    assert desktop.status == DesktopStatus.CREATING
    assert card_status(browser, desktop) == "Creating"
    assert find(browser, f"#desktop-{desktop.pk} progress").is_displayed()
    wait_until(browser, lambda d: find(d, "#live").get_attribute("data-state") == "live", "live")
    mark_page(browser)

    # The worker creates the disk and defines the domain: the course page follows live.
    assert any(name.startswith("desktops.tasks.create_desktop") for name in queued_tasks.run_all())
    wait_until(browser, lambda d: card_status(d, desktop) == "Stopped", "the card to be Stopped")
    assert not find(browser, f"#desktop-{desktop.pk} progress").is_displayed()
    assert page_never_reloaded(browser)
    assert audit(browser) == []
    keep(browser, "course-page")
    with phone_screen(browser):
        assert audit(browser) == []
        keep(browser, "course-page-phone")

    # An install ISO, uploaded in chunks (8 MiB each) with a progress bar.
    browser.find_element(By.LINK_TEXT, "Install media").click()
    wait_until(browser, lambda d: path_of(d) == "/media/", "the install media page")
    iso = tmp_path / "rescue.iso"
    iso.write_bytes(os.urandom(20 * 1024 * 1024 + 12345))
    find(browser, "#upload-file").send_keys(str(iso))
    find(browser, "#upload button[type=submit]").click()
    wait_until(browser, lambda d: find(d, "#upload-progress").is_displayed(), "the progress bar")
    wait_until(browser, lambda d: "Reloading" in find(d, "#upload-progress").text, "the upload")
    assert find(browser, "#upload-bar").get_attribute("value") == "100"
    keep(browser, "install-media-uploaded")
    assert "templates_app.tasks.verify_media_upload" in queued_tasks.run_all()
    wait_until(browser, lambda d: find(d, "#upload-progress").get_attribute("hidden"), "reload")
    browser.refresh()
    assert not find(browser, "#upload-cancel").is_displayed(), "Pause, with nothing to pause"
    media_row = find(browser, "tr[data-media]")
    assert media_row.get_attribute("data-status") == "ready"
    assert hashlib.sha256(iso.read_bytes()).hexdigest()[:16] in media_row.text
    assert audit(browser) == []
    keep(browser, "install-media")
    with phone_screen(browser):
        assert audit(browser) == []
        keep(browser, "install-media-phone")
    browser.find_element(By.LINK_TEXT, "My templates").click()
    wait_until(browser, lambda d: path_of(d) == "/templates/", "the templates page")
    assert audit(browser) == []
    with phone_screen(browser):
        assert audit(browser) == []

    find(browser, "header form button[type=submit]").click()  # Sign out
    wait_until(browser, lambda d: path_of(d) == "/accounts/login/", "the sign-in page again")
    browser.get(f"{base}/courses/")
    assert path_of(browser) == "/accounts/login/", "the teacher is still signed in"

    # The teacher keeps the course page open in a browser of their own, to watch the class.
    teacher_view = new_chromium(tmp_path / "teacher-profile", 1280, 900)
    request.addfinalizer(teacher_view.quit)
    sign_in(teacher_view, platform_server, teacher)
    teacher_view.get(f"{base}/courses/{course.pk}/")
    wait_until(teacher_view, lambda d: find(d, "#live").get_attribute("data-state") == "live", "")
    mark_page(teacher_view)
    counts = f"#deployment-{desktop.deployment_id} [data-role=counts]"
    assert find(teacher_view, counts).text == "1 desktop, 0 running"

    # The student, with the keyboard only, lands on their dashboard.
    browser.get(f"{base}/accounts/login/")
    sign_in_with_keyboard(browser, platform_server, "ana")
    assert path_of(browser) == "/"
    wait_until(browser, lambda d: find(d, "#live").get_attribute("data-state") == "live", "live")
    assert card_status(browser, desktop) == "Stopped"
    mark_page(browser)
    start = find(browser, f"#desktop-{desktop.pk} form[action$='/start/'] button")
    start.send_keys(Keys.ENTER)
    wait_until(browser, lambda d: "is starting" in find(d, "#notice").text, "the answer")
    assert card_status(browser, desktop) == "Starting"
    assert find(browser, f"#desktop-{desktop.pk} progress").is_displayed()
    # The Start button is gone with its status; keyboard focus stayed on the card.
    assert focused_text(browser) == desktop.name

    # The worker boots the guest; only the websocket can tell the page.
    assert "desktops.tasks.start_desktop" in queued_tasks.run_all()
    desktop.refresh_from_db()
    assert desktop.status == DesktopStatus.STARTED, desktop.status_reason
    wait_until(browser, lambda d: card_status(d, desktop) == "Started", "the card to be Started")
    assert page_never_reloaded(browser)
    assert path_of(browser) == "/"
    # The card's buttons changed with it, and a keyboard user is on the one to press next.
    actions = find(browser, f"#desktop-{desktop.pk} [data-role=actions]").text
    assert "Open in the browser" in actions and "Start" not in actions
    assert focused_text(browser) == "Open in the browser"
    assert find(browser, "#announce").text == f"{desktop.name}: Started."
    assert not find(browser, "#notice").is_displayed(), "“is starting” outlived the start"
    # The teacher saw it too, live: the card and the deployment's count; but no viewer
    # link on a student's card (the viewers open for the owner only).
    wait_until(teacher_view, lambda d: card_status(d, desktop) == "Started", "the teacher's card")
    assert find(teacher_view, counts).text == "1 desktop, 1 running"
    teacher_actions = find(teacher_view, f"#desktop-{desktop.pk} [data-role=actions]").text
    assert "Shut down" in teacher_actions and "Open in the browser" not in teacher_actions
    assert page_never_reloaded(teacher_view)
    keep(teacher_view, "course-page-live")
    assert audit(browser) == []
    keep(browser, "dashboard")

    # On a phone: nothing cut off, every button big enough for a thumb.
    with phone_screen(browser):
        assert audit(browser) == []
        small = browser.execute_script(
            """return [...document.querySelectorAll("button, .button, input, select, nav a")]
              .filter((el) => el.offsetParent !== null)
              .map((el) => [el.textContent.trim() || el.name, el.getBoundingClientRect().height])
              .filter(([, height]) => height < 40)"""
        )
        assert small == []
        keep(browser, "dashboard-phone")

    # The viewer, from the card's link, in a new tab: the guest's console, pixel for pixel.
    log = serial_log_path(desktop)
    wait_for(
        lambda: log.exists() and GUEST_READY_MARKER in log.read_text(errors="replace"),
        180,
        "the guest to boot",
    )
    assert GUEST_READY_MARKER in vga_text(desktop)
    dashboard_tab = browser.current_window_handle
    browser.find_element(By.LINK_TEXT, "Open in the browser").click()
    wait_until(browser, lambda d: len(d.window_handles) == 2, "the viewer's tab")
    browser.switch_to.window(next(h for h in browser.window_handles if h != dashboard_tab))
    assert path_of(browser) == f"/desktops/{desktop.pk}/viewer/"
    assert wait_for_state(browser, "connected") == f"Connected to QEMU ({desktop.domain_name})"
    wait_for(lambda: canvas_matches_screen(browser, desktop) > 0.99, 30, "the canvas")
    assert direct_framebuffer(desktop).non_background_ratio() > 0.005  # text, not a blank
    assert audit(browser) == []
    keep(browser, "viewer")


def test_a_student_creates_deletes_and_restores_a_desktop_live_and_is_told_why_one_is_refused(
    base_template: Any,
    test_hypervisor: Any,
    platform_server: AsgiServer,
    queued_tasks: TaskQueue,
    browser: Any,
    no_guest_left_behind: None,
) -> None:
    """The dashboard's other everyday actions, on libvirt's test driver (no guest boots)."""
    from selenium.webdriver.support.ui import Select

    from accounts.models import Quota

    student = UserFactory.create(username="ana", role=Role.STUDENT)
    Quota.objects.create(user=student, max_desktops=1)
    sign_in(browser, platform_server, student)
    browser.get(f"{platform_server.base_url}/")
    wait_until(browser, lambda d: find(d, "#live").get_attribute("data-state") == "live", "live")
    assert "You have no desktops yet" in find(browser, "#cards").text
    # The first Tab reaches "Skip to the content", which takes the keyboard past the menu.
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    ActionChains(browser).send_keys(Keys.TAB).perform()
    assert focused_text(browser) == "Skip to the content"
    ActionChains(browser).send_keys(Keys.ENTER).perform()
    assert browser.execute_script("return document.activeElement.id") == "main"
    mark_page(browser)

    Select(find(browser, "#new-template")).select_by_visible_text(base_template.name)
    find(browser, "#new-name").send_keys("Networks lab")
    find(browser, ".new-desktop button[type=submit]").click()
    wait_until(browser, lambda d: "is being created" in find(d, "#notice").text, "the answer")
    desktop = Desktop.objects.get(owner=student)
    wait_until(browser, lambda d: card_status(d, desktop) == "Creating", "the new card")
    assert find(browser, f"#desktop-{desktop.pk} progress").is_displayed()
    assert find(browser, "#new-name").get_attribute("value") == ""  # the form is ready again
    queued_tasks.run_all()
    wait_until(browser, lambda d: card_status(d, desktop) == "Stopped", "the card to be Stopped")
    assert not find(browser, f"#desktop-{desktop.pk} progress").is_displayed()

    # Over the quota: the refusal says which limit, in an alert, and nothing changes.
    find(browser, "#new-name").send_keys("One too many")
    find(browser, ".new-desktop button[type=submit]").click()
    wait_until(browser, lambda d: "error" in find(d, "#notice").get_attribute("class"), "refusal")
    refusal = find(browser, "#notice")
    assert refusal.get_attribute("role") == "alert"
    assert "allows 1 desktop" in refusal.text, refusal.text
    assert Desktop.objects.filter(owner=student).count() == 1
    assert audit(browser) == []

    # Delete: to the recycle bin, live; restore: back, live.
    find(browser, f"#desktop-{desktop.pk} form[action$='/delete/'] button").click()
    wait_until(browser, lambda d: "recycle bin" in find(d, "#notice").text, "the answer")
    queued_tasks.run_all()
    wait_until(
        browser,
        lambda d: d.find_elements(
            "css selector", f"section[aria-labelledby=bin-heading] #desktop-{desktop.pk}"
        ),
        "the card in the recycle bin",
    )
    assert "Removed for good on" in find(browser, f"#desktop-{desktop.pk}").text
    assert audit(browser) == []
    keep(browser, "dashboard-recycle-bin")
    find(browser, f"#desktop-{desktop.pk} form[action$='/restore/'] button").click()
    wait_until(
        browser,
        lambda d: (
            not d.find_elements("css selector", "section[aria-labelledby=bin-heading]")
            and card_status(d, desktop) == "Stopped"
        ),
        "the card back among my desktops",
    )

    # No host can take it: the worker's placement refuses, and the card says why, live.
    from hypervisors.choices import HypervisorState
    from hypervisors.models import Hypervisor

    Hypervisor.objects.filter(pk=test_hypervisor.pk).update(state=HypervisorState.OFFLINE)
    find(browser, f"#desktop-{desktop.pk} form[action$='/start/'] button").click()
    wait_until(browser, lambda d: card_status(d, desktop) == "Starting", "the start to be taken")
    queued_tasks.run_all()
    wait_until(browser, lambda d: card_status(d, desktop) == "Failed", "the card to be Failed")
    desktop.refresh_from_db()
    reason = find(browser, f"#desktop-{desktop.pk} [data-role=reason]")
    assert reason.is_displayed() and reason.text == desktop.status_reason != ""
    assert find(browser, "#announce").text == f"Networks lab: Failed. {desktop.status_reason}"
    assert "Start" in find(browser, f"#desktop-{desktop.pk} [data-role=actions]").text
    assert audit(browser) == []
    keep(browser, "dashboard-refusal")
    assert page_never_reloaded(browser)

    # The people pages share the layout, and its checks, on a laptop and on a phone.
    for page in ("/accounts/", "/accounts/join/", "/accounts/password/"):
        browser.get(f"{platform_server.base_url}{page}")
        assert audit(browser) == [], page
        with phone_screen(browser):
            assert audit(browser) == [], page


def test_an_admin_watches_the_hypervisors_load_change_without_reloading(
    test_hypervisor: Any, platform_server: AsgiServer, browser: Any
) -> None:
    """The admin's host list follows the monitor: what it writes shows up by itself."""
    from hypervisors.models import Hypervisor

    admin = UserFactory.create(username="root", role=Role.ADMIN, school=None, is_staff=True)
    Hypervisor.objects.filter(pk=test_hypervisor.pk).update(cpu_load=0.12)
    sign_in(browser, platform_server, admin)
    browser.get(f"{platform_server.base_url}/admin/hypervisors/hypervisor/")
    row = f"#result_list tbody tr:has(a[href$='/{test_hypervisor.pk}/change/'])"
    assert "12%" in find(browser, row).text
    mark_page(browser)

    # The monitor's next sample (`hypervisor_refresh` writes these columns every round).
    Hypervisor.objects.filter(pk=test_hypervisor.pk).update(cpu_load=0.37)
    wait_until(browser, lambda d: "37%" in find(d, row).text, "the new load", timeout=40)
    assert page_never_reloaded(browser)
    keep(browser, "admin-hypervisors")


def test_a_teacher_makes_a_template_of_a_desktop_and_shares_it_with_the_class(
    base_template: Any,
    test_hypervisor: Any,
    platform_server: AsgiServer,
    queued_tasks: TaskQueue,
    browser: Any,
    no_guest_left_behind: None,
) -> None:
    """From the card's "Make a template" to the template shared with a course (test driver)."""
    from selenium.webdriver.common.by import By

    from desktops.services.provisioning import desktop_create
    from templates_app.models import Template
    from templates_app.selectors import templates_visible_to

    course = CourseFactory.create(name="2B")
    teacher = UserFactory.create(username="tere", role=Role.TEACHER, school=course.school)
    student = UserFactory.create(username="ana", role=Role.STUDENT, school=course.school)
    MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    MembershipFactory.create(course=course, user=student, role=CourseRole.STUDENT)
    desktop = desktop_create(actor=teacher, template=base_template, name="Lesson prep")
    queued_tasks.run_all()
    sign_in(browser, platform_server, teacher)
    browser.get(f"{platform_server.base_url}/")
    assert card_status(browser, desktop) == "Stopped"

    browser.find_element(By.LINK_TEXT, "Make a template").click()
    wait_until(browser, lambda d: path_of(d) == f"/desktops/{desktop.pk}/template/", "the form")
    assert audit(browser) == []
    name = find(browser, "#template-name")
    name.clear()
    name.send_keys("Networks, lesson 1")
    find(browser, "main form button[type=submit]").click()
    wait_until(browser, lambda d: path_of(d) == "/", "the dashboard again")
    assert "is being made" in find(browser, ".messages").text
    wait_until(browser, lambda d: find(d, "#live").get_attribute("data-state") == "live", "live")
    assert card_status(browser, desktop) == "Creating template"
    assert find(browser, f"#desktop-{desktop.pk} progress").is_displayed()
    mark_page(browser)

    queued_tasks.run_all()
    wait_until(browser, lambda d: card_status(d, desktop) == "Stopped", "the desktop back")
    assert page_never_reloaded(browser)
    template = Template.objects.get(name="Networks, lesson 1")
    assert template.get_status_display() == "Ready"

    browser.find_element(By.LINK_TEXT, "My templates").click()
    article = f"#template-{template.pk}"
    assert "Ready" in find(browser, article).text
    assert not templates_visible_to(student).filter(pk=template.pk).exists()
    find(browser, f"{article} input[name=courses][value='{course.pk}']").click()
    find(browser, f"{article} button[type=submit]").click()
    wait_until(browser, lambda d: "is shared with 2B." in find(d, ".messages").text, "the sharing")
    assert templates_visible_to(student).filter(pk=template.pk).exists()
    assert audit(browser) == []
    keep(browser, "templates")
