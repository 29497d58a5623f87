"""Team tasks (seed 003): users with a JWT; ADMIN may do anything, MEMBER less.

MEMBER: read every task, create tasks, update the tasks they created or are
assigned to; only ADMIN deletes. Every change writes its event to the
outbox in the same transaction; the worker is kicked once the response is out.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session
from starlette.background import BackgroundTask
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from tenantkit.errors import Forbidden, NotFound
from tenantkit.types import Identity

from ..accounts import find_user
from ..auth import ADMIN, require_user
from ..models import (
    TASK_STATUSES,
    EventDelivery,
    OutboxEvent,
    Task,
    User,
    is_id,
    rfc3339,
    utcnow,
)
from ..openapi import PAGE_QUERY, list_of, operation
from ..outbox import emit
from ..paging import page, page_params
from ..services import Services, services
from ..validation import Body, Field, email_field, invalid, query_choice, query_text, read_json

TITLE = Field("title", "string", min_length=1, max_length=200, not_blank=True)
DESCRIPTION = Field("description", "string", max_length=10_000)
ASSIGNEE = email_field("assigned_to", required=False, nullable=True)
CREATE_TASK = Body(
    (
        Field("title", "string", required=True, min_length=1, max_length=200, not_blank=True),
        DESCRIPTION,
        ASSIGNEE,
    )
)
UPDATE_TASK = Body(
    (TITLE, DESCRIPTION, ASSIGNEE, Field("status", "string", enum=TASK_STATUSES)), min_fields=1
)
TASK = {
    "type": "object",
    "required": ["task_id", "tenant_id", "title", "status", "created_at", "created_by"],
    "properties": {
        "task_id": {"type": "string"},
        "tenant_id": {"type": "string"},
        "title": {"type": "string"},
        "description": {"type": "string"},
        "status": {"type": "string", "enum": list(TASK_STATUSES)},
        "assigned_to": {"type": ["string", "null"]},
        "created_by": {"type": "string"},
        "created_at": {"type": "string", "format": "date-time"},
        "updated_at": {"type": "string", "format": "date-time"},
    },
}
EVENTS = list_of({"type": "object", "required": ["event_id", "type", "deliveries"]})


def _respond(s: Services, body: Any, status: int = 200, location: str | None = None) -> Response:
    # The worker runs once the client has its answer (Starlette's background task).
    headers = {"Location": location} if location else None
    return JSONResponse(body, status, headers=headers, background=BackgroundTask(s.outbox.kick))


def _task(session: Session, task_id: str, *, lock: bool = False) -> Task:
    # A change locks the row first: a concurrent change then waits, and compares
    # against (and records the change from) the committed values, not stale ones.
    task = session.get(Task, task_id, with_for_update=lock) if is_id(task_id) else None
    if task is None:
        raise NotFound(f"task {task_id!r} not found")
    return task


def _check_still_a_user(session: Session, identity: Identity) -> None:
    # An access token outlives a deleted user by up to its TTL; changes need a live user.
    subject = identity.subject or ""
    if not is_id(subject) or session.get(User, subject) is None:
        raise Forbidden("your user no longer exists in this tenant", reason="user_deleted")


def _has_events(session: Session, task_id: str) -> bool:
    first = select(OutboxEvent.id).where(OutboxEvent.task_id == task_id).limit(1)
    return session.scalar(first) is not None


def _check_assignee(session: Session, email: str | None) -> None:
    if email is not None and find_user(session, email) is None:
        raise invalid([{"field": "assigned_to", "message": "is not a user of this tenant"}])


def _may_update(identity: Identity, task: Task) -> bool:
    if identity.has_role(ADMIN):
        return True
    return task.created_by == identity.subject or (
        task.assigned_to is not None and task.assigned_to == identity.claims.get("email")
    )


@operation("Create a task", tag="tasks", security="user", body=CREATE_TASK, responses={201: TASK})
async def create_task(request: Request) -> Response:
    s = services(request)
    identity = require_user()
    data = CREATE_TASK.parse(await read_json(request, max_bytes=s.config.max_body_bytes))

    def work(session: Session) -> dict[str, Any]:
        _check_still_a_user(session, identity)
        _check_assignee(session, data.get("assigned_to"))
        task = Task(
            title=data["title"],
            description=data.get("description", ""),
            assigned_to=data.get("assigned_to"),
            status="OPEN",
            created_by=identity.subject,
        )
        session.add(task)
        session.flush()
        emit(session, "TaskCreated", task)
        return task.to_dict()

    body = await s.db.run(work)
    return _respond(s, body, 201, location=f"/tasks/{body['task_id']}")


@operation(
    "List tasks",
    tag="tasks",
    security="user",
    query=(
        *PAGE_QUERY,
        Field("status", "string", enum=TASK_STATUSES),
        Field("assigned_to", "string", max_length=254),
    ),
    responses={200: list_of(TASK)},
)
async def list_tasks(request: Request) -> Response:
    require_user()
    limit, after = page_params(request)
    status = query_choice(request, "status", TASK_STATUSES)
    assignee = query_text(request, "assigned_to", max_length=254)

    def work(session: Session) -> dict[str, Any]:
        query = select(Task).order_by(Task.id).limit(limit + 1)
        if after is not None:
            query = query.where(Task.id > after)
        if status is not None:
            query = query.where(Task.status == status)
        if assignee is not None:
            query = query.where(Task.assigned_to == assignee.lower())
        return page(session.scalars(query).all(), limit)

    return JSONResponse(await services(request).db.run(work))


@operation("Get a task", tag="tasks", security="user", responses={200: TASK})
async def get_task(request: Request) -> Response:
    require_user()
    task_id = request.path_params["task_id"]
    body = await services(request).db.run(lambda session: _task(session, task_id).to_dict())
    return JSONResponse(body)


@operation(
    "Update a task (MEMBER: own tasks only)",
    tag="tasks",
    security="user",
    body=UPDATE_TASK,
    responses={200: TASK},
)
async def update_task(request: Request) -> Response:
    s = services(request)
    identity = require_user()
    task_id = request.path_params["task_id"]
    data = UPDATE_TASK.parse(await read_json(request, max_bytes=s.config.max_body_bytes))

    def work(session: Session) -> dict[str, Any]:
        _check_still_a_user(session, identity)
        task = _task(session, task_id, lock=True)
        if not _may_update(identity, task):
            raise Forbidden("MEMBERs may update only their own tasks", reason="not_owner")
        if "assigned_to" in data:
            _check_assignee(session, data["assigned_to"])
        changes = {
            name: [getattr(task, name), value]
            for name, value in data.items()
            if getattr(task, name) != value
        }
        if changes:
            for name, (_, value) in changes.items():
                setattr(task, name, value)
            task.updated_at = utcnow()
            session.flush()
            emit(session, "TaskUpdated", task, changes=changes)
        return task.to_dict()

    return _respond(s, await s.db.run(work))


@operation("Delete a task (ADMIN only)", tag="tasks", security="user", responses={204: None})
async def delete_task(request: Request) -> Response:
    s = services(request)
    identity = require_user()
    if not identity.has_role(ADMIN):
        raise Forbidden("only ADMINs delete tasks", reason="role", required=ADMIN)
    task_id = request.path_params["task_id"]

    def work(session: Session) -> None:
        _check_still_a_user(session, identity)
        task = _task(session, task_id, lock=True)
        emit(session, "TaskDeleted", task)
        session.delete(task)

    await s.db.run(work)
    return Response(status_code=204, background=BackgroundTask(s.outbox.kick))


@operation(
    "What the background handlers did for a task, oldest event first",
    tag="tasks",
    security="user",
    query=PAGE_QUERY,
    responses={200: EVENTS},
)
async def task_events(request: Request) -> Response:
    require_user()
    task_id = request.path_params["task_id"]
    limit, after = page_params(request)
    if not is_id(task_id):
        raise NotFound(f"task {task_id!r} not found")

    def work(session: Session) -> dict[str, Any]:
        query = select(OutboxEvent).where(OutboxEvent.task_id == task_id)
        if after is not None:
            query = query.where(OutboxEvent.id > after)
        events = session.scalars(query.order_by(OutboxEvent.id).limit(limit + 1)).all()
        # A deleted task keeps its events (TaskDeleted last); a task never had none.
        if not events and session.get(Task, task_id) is None and not _has_events(session, task_id):
            raise NotFound(f"task {task_id!r} not found")
        deliveries = session.scalars(
            select(EventDelivery)
            .where(EventDelivery.event_id.in_([e.id for e in events[:limit]]))
            .order_by(EventDelivery.handler)
        ).all()
        by_event: dict[str, list[dict[str, Any]]] = {}
        for d in deliveries:
            by_event.setdefault(d.event_id, []).append(d.to_dict())

        def render(e: OutboxEvent) -> dict[str, Any]:
            return {
                "event_id": e.id,
                "type": e.type,
                "actor": e.actor,
                "created_at": rfc3339(e.created_at),
                "deliveries": by_event.get(e.id, []),
            }

        return {"task_id": task_id, **page(events, limit, render)}

    return JSONResponse(await services(request).db.run(work))


routes = [
    Route("/tasks", create_task, methods=["POST"], name="tasks"),
    Route("/tasks", list_tasks, methods=["GET"], name="tasks"),
    Route("/tasks/{task_id}", get_task, methods=["GET"], name="task"),
    Route("/tasks/{task_id}", update_task, methods=["PUT"], name="task"),
    Route("/tasks/{task_id}", delete_task, methods=["DELETE"], name="task"),
    Route("/tasks/{task_id}/events", task_events, methods=["GET"], name="task_events"),
]
