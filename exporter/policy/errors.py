"""The one error a policy manifest can raise: it names the field, so nobody reads a traceback."""

from __future__ import annotations


class PolicyError(ValueError):
    """An invalid manifest. `field` is the path inside the object (`spec.ingress[0].ports[1].endPort`),
    `where` says which file and document it came from, when known."""

    def __init__(self, field: str, problem: str, where: str = "") -> None:
        self.field = field
        self.problem = problem
        self.where = where
        super().__init__(str(self))

    def __str__(self) -> str:
        head = f"{self.field}: {self.problem}" if self.field else self.problem
        return f"{self.where}: {head}" if self.where else head

    def located(self, where: str) -> PolicyError:
        """The same error, told where it was found (the innermost location is kept)."""
        return PolicyError(self.field, self.problem, self.where or where)
