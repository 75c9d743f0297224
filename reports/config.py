"""The report's configuration: the department leads who get it (each their
sections) and the lifecycle metrics' targets, from the environment."""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

# The report's departments, in the order they are shown.
SECTIONS = ("sellers", "categories", "delivery", "customer_service")
SECTION_TITLES = {
    "sellers": "Sellers",
    "categories": "Products and categories",
    "delivery": "Delivery",
    "customer_service": "Customer service",
}
LEADS_VARIABLE = "WOCAS_LEADS"
_EMAIL = re.compile(r"^[^@\s<>]+@[^@\s<>]+\.[^@\s<>]+$")


class ReportConfigError(ValueError):
    """The report's configuration is wrong; the message says what and where."""


@dataclass(frozen=True)
class Lead:
    name: str
    email: str
    sections: tuple[str, ...]


def parse_leads(text: str | None) -> list[Lead]:
    """WOCAS_LEADS: a JSON list of {"name", "email", "sections"}, sections
    from SECTIONS. Empty or unset: nobody."""
    if not text or not text.strip():
        return []
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportConfigError(f"{LEADS_VARIABLE} is not JSON ({err.msg} at character {err.pos})") from None
    if not isinstance(raw, list):
        raise ReportConfigError(f'{LEADS_VARIABLE} must be a JSON list of {{"name", "email", "sections"}}')
    leads, seen = [], set()
    for n, entry in enumerate(raw, start=1):
        where = f"{LEADS_VARIABLE} entry {n}"
        if not isinstance(entry, dict):
            raise ReportConfigError(f'{where} must be an object with "name", "email" and "sections"')
        unknown = set(entry) - {"name", "email", "sections"}
        if unknown:
            raise ReportConfigError(f"{where} has unknown field(s) {', '.join(sorted(unknown))}")
        name, email, sections = entry.get("name"), entry.get("email"), entry.get("sections")
        if not isinstance(name, str) or not name.strip():
            raise ReportConfigError(f'{where} needs a "name"')
        if not isinstance(email, str) or not _EMAIL.match(email):
            raise ReportConfigError(f'{where} ({name}) needs an "email" like lead@shop.example')
        if email.lower() in seen:
            raise ReportConfigError(f"{where} ({name}) repeats an email address another lead has")
        seen.add(email.lower())
        if not isinstance(sections, list) or not sections or not all(isinstance(s, str) for s in sections):
            raise ReportConfigError(f'{where} ({name}) needs "sections", a list of some of: {", ".join(SECTIONS)}')
        wrong = [s for s in sections if s not in SECTIONS]
        if wrong:
            raise ReportConfigError(
                f"{where} ({name}) has unknown section(s) {', '.join(wrong)}; one of: {', '.join(SECTIONS)}"
            )
        leads.append(Lead(name=name.strip(), email=email, sections=tuple(s for s in SECTIONS if s in sections)))
    return leads


def leads_from_env(env: Mapping[str, str]) -> list[Lead]:
    return parse_leads(env.get(LEADS_VARIABLE))
