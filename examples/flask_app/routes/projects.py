"""Projects with their teams; members see the projects they have access to."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, g, jsonify
from flask.typing import ResponseReturnValue
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session
from sqlalchemy.orm.exc import StaleDataError

from tenantkit.context import current_tenant
from tenantkit.errors import Conflict, NotFound, UnprocessableEntity

from .. import schemas
from ..api import endpoint
from ..context import db, now, platform
from ..models import ADMIN_ROLES, Membership, Project
from ..pagination import decode_cursor, encode_cursor, filtered_page
from ..security import new_id
from ..serialize import created, page, project_dict
from ..usage_view import enforce, project_count

bp = Blueprint("projects", __name__)


@bp.post("/organizations/<org_id>/projects")
@endpoint(
    "Create a project",
    auth="admin",
    tag="projects",
    body=schemas.PROJECT,
    status=201,
    responses=(401, 402, 403, 404, 409, 422),
    response="Project",
    description="Past the plan's project limit: 402 with upgrade_to.",
)
def create_project(org_id: str, body: dict[str, Any]) -> ResponseReturnValue:
    session = db()
    enforce(current_tenant(), "projects", project_count(session) + 1)
    if session.scalars(select(Project.id).where(Project.slug == body["slug"])).first():
        raise Conflict(f"a project with slug {body['slug']!r} exists", field="slug")
    team = _team(session, body["team"])
    moment = now()
    project = Project(
        id=new_id("prj"),
        name=body["name"],
        slug=body["slug"],
        type=body["type"],
        environment=body["environment"],
        team=team,
        created_by=g.member.user_id,
        created_at=moment,
        updated_at=moment,
    )
    session.add(project)
    try:
        session.commit()
    except IntegrityError as exc:  # the same slug created concurrently
        raise Conflict(f"a project with slug {body['slug']!r} exists", field="slug") from exc
    return created(project_dict(project), location=f"/organizations/{org_id}/projects/{project.id}")


@bp.get("/organizations/<org_id>/projects")
@endpoint(
    "List projects (members: the ones they can access)",
    auth="member",
    tag="projects",
    query=schemas.PAGE_QUERY,
    responses=(401, 404, 422),
    response="ProjectPage",
)
def list_projects(org_id: str, query: dict[str, Any]) -> ResponseReturnValue:
    def fetch(after: str | None, size: int) -> list[Project]:
        statement = select(Project).order_by(Project.id).limit(size)
        if after is not None:
            statement = statement.where(Project.id > after)
        return list(db().scalars(statement))

    projects, last = filtered_page(
        fetch,
        _can_see,
        lambda project: project.id,
        limit=query["limit"],
        after=decode_cursor(query.get("cursor"), str),
    )
    next_cursor = None if last is None else encode_cursor(last)
    return jsonify(page((project_dict(p) for p in projects), next_cursor))


@bp.get("/organizations/<org_id>/projects/<project_id>")
@endpoint(
    "Get a project; ?include=resources adds its usage by type",
    auth="member",
    tag="projects",
    query=schemas.PROJECT_QUERY,
    responses=(401, 404, 422),
    response="Project",
)
def get_project(org_id: str, project_id: str, query: dict[str, Any]) -> ResponseReturnValue:
    project = _visible(project_id)
    body = project_dict(project)
    if query.get("include") == "resources":
        report = platform().usage.report(org_id, query.get("billing_cycle"), plan=current_tenant())
        body["resources"] = {
            "billing_cycle": report.billing_cycle,
            "usage": dict(report.by_project.get(project.id, {})),
        }
    return jsonify(body)


@bp.put("/organizations/<org_id>/projects/<project_id>")
@endpoint(
    "Update a project (optimistic locking on version)",
    auth="admin",
    tag="projects",
    body=schemas.PROJECT_UPDATE,
    responses=(401, 403, 404, 409, 422),
    response="Project",
)
def update_project(org_id: str, project_id: str, body: dict[str, Any]) -> ResponseReturnValue:
    session = db()
    project = _visible(project_id)
    if project.version != body["version"]:
        raise Conflict(
            "the project changed since you read it; reload and retry",
            current_version=project.version,
        )
    if "team" in body:
        body["team"] = _team(session, body["team"])
    for name in ("name", "type", "environment", "team"):
        if name in body:
            setattr(project, name, body[name])
    project.updated_at = now()
    try:
        session.commit()
    except StaleDataError as exc:
        session.rollback()
        raise Conflict("the project changed since you read it; reload and retry") from exc
    return jsonify(project_dict(project))


def _visible(project_id: str) -> Project:
    project = db().get(Project, project_id)
    if project is None or not _can_see(project):
        raise NotFound("project not found")
    return project


def _can_see(project: Project) -> bool:
    member: Membership = g.member
    if member.role in ADMIN_ROLES or project.id in member.projects:
        return True
    return any(entry.get("user_id") == member.user_id for entry in project.team)


def _team(session: Session, team: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Check that every team member belongs to the organization; return the clean team."""
    ids = [entry["user_id"] for entry in team]
    members = set(session.scalars(select(Membership.user_id).where(Membership.user_id.in_(ids))))
    for index, user_id in enumerate(ids):
        if user_id not in members:
            raise UnprocessableEntity(
                f"user {user_id!r} is not a member of this organization",
                field=f"team[{index}].user_id",
            )
    if len(set(ids)) != len(ids):
        raise UnprocessableEntity("a user appears twice in the team", field="team")
    return [{"user_id": e["user_id"], "role": e["role"]} for e in team]
