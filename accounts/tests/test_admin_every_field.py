"""Every page of the admin, as a careful school manager or teacher would probe it (issue 13).

Driven by what `admin.site` registers, so a new ModelAdmin or inline is probed without
being listed here: with two schools populated, each role sees only its school's rows, is
offered no other school's object in any choice field, cannot POST one in, cannot set a
field its form does not show, and its list actions leave the other school untouched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest
from django import forms
from django.contrib import admin
from django.db.models import Model
from django.forms.models import model_to_dict
from django.test import Client
from django.urls import NoReverseMatch, reverse

from accounts.choices import CourseRole, Role
from accounts.models import Course, CourseMembership, EnrolmentCode, Quota, School, User
from accounts.tests.factories import CourseFactory, MembershipFactory, SchoolFactory, UserFactory
from desktops.choices import DesktopStatus
from desktops.models import Deployment, Desktop, DesktopEvent, Pool
from hypervisors.models import PlacementRule
from hypervisors.tests.factories import HypervisorFactory
from templates_app.models import HardwareProfile, Media, Template
from templates_app.tests.factories import HardwareProfileFactory

pytestmark = pytest.mark.django_db

#: Infrastructure every school shares: any role that sees them sees them all.
SHARED = {"HardwareProfile", "Hypervisor", "StoragePool", "Disk", "HypervisorEvent"}
#: Fields a forged POST tries to set where the form does not show them.
FORGED = ("school", "owner", "path", "is_superuser", "is_staff", "role", "disk", "hypervisor")
#: Of those, the ones no form below administrator may show as editable at all.
NEVER_EDITABLE = ("path", "is_superuser", "is_staff", "disk", "hypervisor")


@dataclass
class Campus:
    school: School
    manager: User
    teacher: User
    student: User
    course: Course
    template: Template
    media: Media
    desktop: Desktop
    deployment: Deployment
    quota: Quota
    rows: dict[type[Model], list[Model]] = field(default_factory=dict)


def campus(slug: str, hardware: HardwareProfile) -> Campus:
    school = SchoolFactory.create(name=slug.capitalize(), slug=slug)
    manager = UserFactory.create(username=f"{slug}-manager", role=Role.MANAGER, school=school)
    teacher = UserFactory.create(username=f"{slug}-teacher", role=Role.TEACHER, school=school)
    student = UserFactory.create(username=f"{slug}-student", school=school)
    course = CourseFactory.create(school=school, name=f"{slug}-course")
    teaching = MembershipFactory.create(course=course, user=teacher, role=CourseRole.TEACHER)
    learning = MembershipFactory.create(course=course, user=student)
    template = Template.objects.create(name=f"{slug}-template", owner=teacher, hardware=hardware)
    media = Media.objects.create(name=f"{slug}-media", owner=teacher, path=f"/x/{slug}.iso")
    deployment = Deployment.objects.create(
        name=f"{slug}-deployment", course=course, template=template, owner=teacher
    )
    desktop = Desktop.objects.create(
        name=f"{slug}-desktop",
        owner=student,
        course=course,
        template=template,
        hardware=hardware,
        deployment=deployment,
        status=DesktopStatus.STOPPED,
    )
    desktop.media.add(media)
    teachers_desktop = Desktop.objects.create(
        name=f"{slug}-teachers-desktop",
        owner=teacher,
        hardware=hardware,
        status=DesktopStatus.STOPPED,
    )
    event = DesktopEvent.objects.create(
        desktop=desktop, from_status="", to_status=DesktopStatus.STOPPED, reason=f"{slug}-event"
    )
    quota = Quota.objects.create(school=school, max_running=1)
    rule = PlacementRule.objects.create(course=course)
    pool = Pool.objects.create(name=f"{slug}-pool", course=course, template=template, owner=teacher)
    rows: dict[type[Model], list[Model]] = {
        School: [school],
        User: [manager, teacher, student],
        Course: [course],
        CourseMembership: [teaching, learning],
        Template: [template],
        Media: [media],
        Deployment: [deployment],
        Desktop: [desktop, teachers_desktop],
        DesktopEvent: [event],
        Quota: [quota],
        PlacementRule: [rule],
        Pool: [pool],
    }
    return Campus(
        school, manager, teacher, student, course, template, media, desktop, deployment, quota, rows
    )


@pytest.fixture
def schools() -> tuple[Campus, Campus]:
    hardware = HardwareProfileFactory.create()
    HypervisorFactory.create(name="host-1")
    return campus("north", hardware), campus("south", hardware)


def signed_in(user: User) -> Client:
    client = Client()
    client.force_login(user)
    return client


def url(model: type[Model], page: str, *args: Any) -> str:
    return reverse(f"admin:{model._meta.app_label}_{model._meta.model_name}_{page}", args=args)


def registered() -> list[type[Model]]:
    return sorted(admin.site._registry, key=lambda model: model._meta.label)


ROLES = ("manager", "teacher")


def snapshot(campus: Campus) -> dict[str, Any]:
    """Everything of a school an admin page could change, to compare after an attack."""
    state: dict[str, Any] = {}
    for model, objects in campus.rows.items():
        for obj in objects:
            row = model._default_manager.filter(pk=obj.pk).first()
            state[f"{model._meta.label}:{obj.pk}"] = (
                None if row is None else {k: repr(v) for k, v in model_to_dict(row).items()}
            )
    state["codes"] = sorted(
        EnrolmentCode.objects.filter(course=campus.course).values_list("code", "enabled")
    )
    state["templates"] = Template.objects.filter(owner__school=campus.school).count()
    state["events"] = DesktopEvent.objects.filter(desktop__owner__school=campus.school).count()
    return state


def bound_data(form: forms.BaseForm) -> dict[str, Any]:
    """What a browser sends back for a form as the GET rendered it."""
    data: dict[str, Any] = {}
    for name, formfield in form.fields.items():
        if formfield.disabled:
            continue
        bound = form[name]
        value = bound.value()
        widget = formfield.widget
        if isinstance(widget, forms.MultiWidget):
            parts = value if isinstance(value, list | tuple) else widget.decompress(value) or []
            names: list[str] = widget.widgets_names  # type: ignore[attr-defined]
            for suffix, sub, part in zip(names, widget.widgets, parts, strict=False):
                if part is not None:
                    data[bound.html_name + suffix] = sub.format_value(part)
        elif isinstance(formfield, forms.ModelMultipleChoiceField):
            data[bound.html_name] = [str(getattr(v, "pk", v)) for v in value or []]
        elif isinstance(widget, forms.CheckboxInput):
            if value:
                data[bound.html_name] = "on"
        elif value is not None:
            prepared = formfield.prepare_value(value)
            data[bound.html_name] = "" if prepared is None else str(prepared)
    return data


def page_forms(response: Any) -> list[tuple[str, forms.BaseForm]]:
    """The main form and every inline form of an add or change page, with their role."""
    found: list[tuple[str, forms.BaseForm]] = [("form", response.context["adminform"].form)]
    for inline in response.context["inline_admin_formsets"]:
        found.append(("management", inline.formset.management_form))
        found.extend(("inline", form) for form in inline.formset.forms)
    return found


def page_data(response: Any) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for _, form in page_forms(response):
        data.update(bound_data(form))
    return data


def choice_fields(response: Any) -> list[tuple[forms.BaseForm, str, forms.ModelChoiceField]]:
    return [
        (form, name, formfield)
        for kind, form in page_forms(response)
        if kind != "management"
        for name, formfield in form.fields.items()
        if isinstance(formfield, forms.ModelChoiceField) and not formfield.disabled
    ]


def errors_of(response: Any) -> str:
    """Every form error of a re-rendered page, main form and inlines."""
    found = [str(response.context["adminform"].form.errors)]
    for inline in response.context["inline_admin_formsets"]:
        found.extend(str(form.errors) for form in inline.formset.forms)
        found.append(str(inline.formset.non_form_errors()))
    return " ".join(found)


def pages(client: Client, model: type[Model], own: list[Model]) -> list[tuple[str, Any]]:
    """The add and change pages the role may open for `model`."""
    found = []
    targets = [("add", url(model, "add"))] + [("change", url(model, "change", o.pk)) for o in own]
    for kind, address in targets:
        response = client.get(address)
        if response.status_code == 200 and "adminform" in (response.context or {}):
            found.append((kind, address, response))
    return [(address, response) for _, address, response in found]


# --- 1. lists and change pages -----------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_every_list_and_change_page_hides_the_other_school(
    schools: tuple[Campus, Campus], role: str
) -> None:
    for mine, theirs in (schools, schools[::-1]):
        client = signed_in(getattr(mine, role))
        for model in registered():
            response = client.get(url(model, "changelist"))
            if response.status_code == 403 or model.__name__ in SHARED:
                continue
            assert response.status_code == 200, model
            listed = set(response.context["cl"].result_list.values_list("pk", flat=True))
            for obj in theirs.rows.get(model, []):
                assert obj.pk not in listed, (role, model, obj)
                other = client.get(url(model, "change", obj.pk))
                # Django's answer for a row outside the admin's queryset: "does not exist".
                assert other.status_code == 302, (role, model, obj)
                assert other["Location"] == "/admin/"


def test_a_student_opens_no_admin_page(schools: tuple[Campus, Campus]) -> None:
    north, _ = schools
    north.student.is_staff = True
    north.student.save()
    client = signed_in(north.student)
    for model in registered():
        for address in (url(model, "changelist"), url(model, "add")):
            response = client.get(address)
            assert response.status_code == 302, address
            assert response["Location"].startswith(reverse("admin:login"))


# --- 2. and 3. choices offered and forged --------------------------------------------------------


def others_of(model: type[Model], theirs: Campus) -> list[Model]:
    if model.__name__ in SHARED or model._meta.label in ("auth.Group", "auth.Permission"):
        return []
    assert model in theirs.rows, f"{model._meta.label}: add a row of it to the two schools"
    return theirs.rows[model]


@pytest.mark.parametrize("role", ROLES)
def test_no_choice_field_offers_or_takes_the_other_schools_rows(
    schools: tuple[Campus, Campus], role: str
) -> None:
    probed = 0
    for mine, theirs in (schools, schools[::-1]):
        client = signed_in(getattr(mine, role))
        for model in registered():
            for address, response in pages(client, model, mine.rows.get(model, [])):
                for form, name, formfield in choice_fields(response):
                    assert formfield.queryset is not None
                    related = formfield.queryset.model
                    offered = set(formfield.queryset.values_list("pk", flat=True))
                    # An inline row's hidden id: not offered, but forged all the same.
                    row_id = name == form._meta.model._meta.pk.name  # type: ignore[attr-defined]
                    for other in others_of(related, theirs):
                        assert row_id or other.pk not in offered, (role, address, name, other)
                        before = snapshot(mine), snapshot(theirs)
                        count = model._default_manager.count()
                        data = page_data(response)
                        html_name = form[name].html_name
                        if isinstance(formfield, forms.ModelMultipleChoiceField):
                            data[html_name] = [*data.get(html_name, []), str(other.pk)]
                        else:
                            data[html_name] = str(other.pk)
                        forged = client.post(address, data)
                        if not row_id and forged.status_code != 403:  # 403: a view-only page
                            assert forged.status_code == 200, (role, address, name, other)
                            refusal = errors_of(forged)
                            assert "Select a valid choice" in refusal, (address, name)
                            assert name in refusal, (address, name)  # on that very field
                        assert (snapshot(mine), snapshot(theirs)) == before
                        assert model._default_manager.count() == count
                        probed += 1
    assert probed > 0  # the probe reached forms with choices


@pytest.mark.parametrize("role", ROLES)
def test_fields_a_form_does_not_show_cannot_be_posted(
    schools: tuple[Campus, Campus], role: str
) -> None:
    mine, theirs = schools
    client = signed_in(getattr(mine, role))
    forged_values = {
        "school": str(theirs.school.pk),
        "owner": str(theirs.teacher.pk),
        "path": "/etc/shadow",
        "is_superuser": "on",
        "is_staff": "on",
        "role": Role.ADMIN.value,
        "disk": "1",
        "hypervisor": "1",
    }
    for model in registered():
        for obj in mine.rows.get(model, []):
            address = url(model, "change", obj.pk)
            response = client.get(address)
            if response.status_code != 200 or "adminform" not in response.context:
                continue
            form = response.context["adminform"].form
            shown = [n for n in NEVER_EDITABLE if n in form.fields and not form.fields[n].disabled]
            assert not shown, (role, address, shown)
            hidden = [name for name in FORGED if name not in form.fields]
            if not hidden:
                continue
            before = {name: getattr(obj, name, None) for name in hidden}
            data = page_data(response)
            data.update({name: forged_values[name] for name in hidden})
            client.post(address, data)
            obj.refresh_from_db()
            after = {name: getattr(obj, name, None) for name in hidden}
            assert after == before, (role, address)


# --- 4. file paths ----------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_no_path_is_editable_below_administrator(schools: tuple[Campus, Campus], role: str) -> None:
    mine, _ = schools
    client = signed_in(getattr(mine, role))
    for model in registered():
        for address, response in pages(client, model, mine.rows.get(model, [])):
            for _, form in page_forms(response):
                editable = [name for name, f in form.fields.items() if not f.disabled]
                assert not [name for name in editable if "path" in name], (role, address)


# --- 5. actions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("role", ROLES)
def test_every_action_leaves_the_other_school_untouched(
    schools: tuple[Campus, Campus], role: str
) -> None:
    ran = 0
    for mine, theirs in (schools, schools[::-1]):
        client = signed_in(getattr(mine, role))
        for model in registered():
            response = client.get(url(model, "changelist"))
            if response.status_code != 200 or response.context.get("action_form") is None:
                continue
            names = [n for n, _ in response.context["action_form"].fields["action"].choices if n]
            own = [obj.pk for obj in mine.rows.get(model, [])]
            others = [obj.pk for obj in theirs.rows.get(model, [])]
            if not others:
                continue
            for name in names:
                before = snapshot(theirs)
                client.post(
                    url(model, "changelist"),
                    {"action": name, "_selected_action": [*own, *others], "post": "yes"},
                )
                assert snapshot(theirs) == before, (role, model, name)
                ran += 1
    assert ran > 0


def test_urls_resolve_for_every_registered_model() -> None:
    """The probe above reaches each registered admin through these names."""
    for model in registered():
        try:
            url(model, "changelist")
        except NoReverseMatch:  # pragma: no cover - would be a broken registration
            pytest.fail(model._meta.label)


def test_a_manager_cannot_put_a_desktop_in_another_schools_deployment(
    schools: tuple[Campus, Campus],
) -> None:
    """The hole the probe found: the desktop form offered every school's deployments."""
    north, south = schools
    client = signed_in(north.manager)
    address = url(Desktop, "change", north.desktop.pk)
    page = client.get(address)
    assert south.deployment.name not in page.content.decode()

    data = page_data(page)
    data["deployment"] = str(south.deployment.pk)
    refused = client.post(address, data)

    assert "Select a valid choice" in errors_of(refused)
    north.desktop.refresh_from_db()
    assert north.desktop.deployment == north.deployment


@pytest.mark.parametrize("role", ROLES)
def test_no_autocomplete_offers_the_other_schools_rows(
    schools: tuple[Campus, Campus], role: str
) -> None:
    """The search boxes of `autocomplete_fields` ask the admin for choices over JSON."""
    asked = 0
    for mine, theirs in (schools, schools[::-1]):
        client = signed_in(getattr(mine, role))
        for model, model_admin in admin.site._registry.items():
            holders = [(model, model_admin), *((i.model, i) for i in model_admin.inlines)]
            for holder, options in holders:
                for name in getattr(options, "autocomplete_fields", ()):
                    related = holder._meta.get_field(name).related_model
                    response = client.get(
                        reverse("admin:autocomplete"),
                        {
                            "app_label": holder._meta.app_label,
                            "model_name": holder._meta.model_name,
                            "field_name": name,
                            "term": "",
                        },
                    )
                    if response.status_code == 403:
                        continue
                    assert response.status_code == 200, (role, holder, name)
                    found = {int(row["id"]) for row in response.json()["results"]}
                    assert found, (role, holder, name)  # their own rows come back
                    for other in others_of(related, theirs):
                        assert other.pk not in found, (role, holder, name, other)
                    asked += 1
    assert asked > 0


def test_the_probe_posts_what_a_browser_would(schools: tuple[Campus, Campus]) -> None:
    """The forged POSTs above start from the GET's data: sent back unchanged, it saves."""
    north, _ = schools
    client = signed_in(north.manager)
    saved = 0
    for model in registered():
        for obj in north.rows.get(model, []):
            address = url(model, "change", obj.pk)
            response = client.get(address)
            if response.status_code != 200 or not response.context.get("has_change_permission"):
                continue
            if "adminform" not in response.context:
                continue
            sent = client.post(address, page_data(response))
            assert sent.status_code == 302, (address, errors_of(sent))
            saved += 1
    assert saved > 0
