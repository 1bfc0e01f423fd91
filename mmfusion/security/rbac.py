"""Role-based access: a YAML policy of roles -> allowed RPCs and model name patterns, reloadable at run time."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from fnmatch import fnmatchcase
from pathlib import Path

from mmfusion.security.auth import read_yaml_file
from mmfusion.types import InputError

LOG = logging.getLogger(__name__)
# Health and reflection are always allowed (health needs no credentials at all, see serving/interceptors/).
ALWAYS_ALLOWED_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)
DEFAULT_POLICY = {
    "roles": {
        "operator": {"rpcs": ["Inspect", "StreamInspect", "ListModels", "GetModel"], "models": ["pcb-*"]},
        "analyst": {
            "rpcs": ["AnalyzeAudio", "StreamCall", "GenerateReport", "ListModels", "GetModel"],
            "models": ["*"],
        },
        "admin": {"rpcs": ["*"], "models": ["*"]},
    }
}


class PermissionDenied(Exception):
    """An authenticated caller asked for an RPC or a model its role does not allow."""


def split_method(method: str) -> tuple[str, str]:
    """'/pkg.Service/Method' -> ('pkg.Service', 'Method')."""
    service, _, name = method.lstrip("/").rpartition("/")
    return service, name


@dataclass(frozen=True)
class Role:
    """What one role may do: RPC patterns (short or full names) and model name patterns (fnmatch)."""

    name: str
    rpcs: tuple[str, ...]
    models: tuple[str, ...]

    def allows_rpc(self, method: str) -> bool:
        service, short = split_method(method)
        full = f"{service}/{short}"
        return any(fnmatchcase(short, p) or fnmatchcase(full, p.lstrip("/")) for p in self.rpcs)

    def allows_model(self, model: str) -> bool:
        return any(fnmatchcase(model, pattern) for pattern in self.models)


def _patterns(value, where: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(item, str) and item for item in value):
        raise InputError(f"{where}: {value!r}; expected a list of non-empty strings")
    return tuple(value)


@dataclass(frozen=True)
class Policy:
    """Roles by name; `check` raises PermissionDenied with a message naming the role and what it lacks."""

    roles: dict[str, Role]

    @classmethod
    def from_document(cls, document, source: str = "policy") -> Policy:
        if not isinstance(document, dict) or set(document) != {"roles"} or not isinstance(document["roles"], dict):
            raise InputError(
                f"{source}: expected a mapping with only 'roles: {{name: {{rpcs: [...], models: [...]}}}}'"
            )
        roles = {}
        for name, spec in document["roles"].items():
            where = f"{source}: roles.{name}"
            if not isinstance(spec, dict) or not set(spec) <= {"rpcs", "models"} or "rpcs" not in spec:
                raise InputError(f"{where}: {spec!r}; expected keys rpcs (required) and models (default ['*'])")
            rpcs = _patterns(spec["rpcs"], f"{where}.rpcs")
            models = _patterns(spec.get("models", ["*"]), f"{where}.models")
            roles[str(name)] = Role(str(name), rpcs, models)
        return cls(roles)

    @classmethod
    def from_file(cls, path: str | Path) -> Policy:
        path = Path(path)
        return cls.from_document(read_yaml_file(path, "policy file"), f"policy file {path}")

    def role(self, name: str) -> Role:
        role = self.roles.get(name)
        if role is None:
            raise PermissionDenied(f"role {name!r} is not in the access policy")
        return role

    def check_rpc(self, role_name: str, method: str) -> None:
        service, short = split_method(method)
        if service in ALWAYS_ALLOWED_SERVICES:
            return
        if not self.role(role_name).allows_rpc(method):
            raise PermissionDenied(f"role {role_name!r} may not call {short}")

    def check_model(self, role_name: str, model: str) -> None:
        if not self.role(role_name).allows_model(model):
            raise PermissionDenied(f"role {role_name!r} may not use model {model!r}")

    def allows_model(self, role_name: str, model: str) -> bool:
        role = self.roles.get(role_name)
        return role is not None and role.allows_model(model)


class PolicyStore:
    """The current Policy; `reload()` swaps in a new one atomically, or keeps the old one if the file is broken."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self._policy = Policy.from_file(self.path) if self.path is not None else Policy.from_document(DEFAULT_POLICY)
        self._lock = threading.Lock()

    @property
    def policy(self) -> Policy:
        return self._policy

    def reload(self) -> bool:
        """Re-read the policy file; True when the new policy is in force."""
        if self.path is None:
            return True
        try:
            policy = Policy.from_file(self.path)
        except InputError as error:
            LOG.error("access policy not reloaded, keeping the previous one: %s", error)
            return False
        with self._lock:
            self._policy = policy  # one reference assignment: a call sees the old or the new policy, never a mix
        LOG.info("access policy reloaded from %s: roles %s", self.path, ", ".join(sorted(policy.roles)))
        return True
