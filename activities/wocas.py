"""The WOCAS report's activities (workflows/wocas_report.py): build it for a
period and write its folder; mail one lead their sections, with the charts
inline and the figures as CSV, once per period and lead (the ledger, through
activities/staff_mail.py).

Each lead's mail is built again from PostgreSQL for the same period, by
whichever worker runs it: the folder lives on one worker's disk, and the
report's bytes stay out of Temporal's history. The period's figures are the
same; cases open and overdue are counted as at the period's end.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping

import asyncpg
from temporalio import activity

from activities.staff_mail import StaffMailer
from providers import Attachment, RenderedMessage
from reports.cli import report_folder
from reports.config import SECTION_TITLES, Lead
from reports.period import Period
from reports.render import render_email, write_folder
from reports.wocas import Report, build_report
from workflows.ledger_key import report_mail_key
from workflows.models import WocasBuilt, WocasLead, WocasMail, WocasPeriod

log = logging.getLogger(__name__)

MAIL_KIND = "wocas_report"
# matplotlib's pyplot, which draws the charts, is not thread-safe: one rendering at a time.
_rendering = asyncio.Lock()


class WocasActivities:
    def __init__(
        self, pool: asyncpg.Pool, mailer: StaffMailer, leads: list[Lead], targets: Mapping[str, float], env: Mapping[str, str]
    ) -> None:
        self._pool = pool
        self._mailer = mailer
        self._leads = leads
        self._targets = targets
        self._env = env

    async def _report(self, period: WocasPeriod) -> Report:
        return await build_report(self._pool, Period.ending(period.end, period.days), self._targets)

    @activity.defn
    async def build_wocas_report(self, period: WocasPeriod) -> WocasBuilt:
        """The report written to WOCAS_REPORT_DIR/<period end>, and the leads
        to mail as configured now. A folder that cannot be written is logged
        and left out: the leads still get their mail."""
        report = await self._report(period)
        out = report_folder(self._env, report.period)
        try:
            async with _rendering:
                index = await asyncio.to_thread(write_folder, report, out)
        except OSError as err:
            log.error("the WOCAS report's folder %s could not be written (%s): set WOCAS_REPORT_DIR to a writable folder",
                      out, err.strerror or err)
            folder = None
        else:
            folder = str(index.parent.resolve())
        leads = [WocasLead(name=lead.name, email=lead.email, sections=list(lead.sections)) for lead in self._leads]
        return WocasBuilt(folder=folder, leads=leads)

    @activity.defn
    async def mail_wocas_report(self, mail: WocasMail) -> str:
        """The lead's mail's message id; a second call for the same period and lead sends nothing."""
        lead = Lead(name=mail.lead.name, email=mail.lead.email, sections=tuple(mail.lead.sections))
        report = await self._report(mail.period)
        async with _rendering:
            rendered = await asyncio.to_thread(render_email, report, lead)
        sections = ", ".join(SECTION_TITLES[s] for s in lead.sections)
        message = RenderedMessage(
            key=report_mail_key(mail.period.end, mail.period.days, lead.email),
            recipient=lead.email,
            subject=rendered.subject,
            text=(
                f"What our customers are saying, {report.period.label} (UTC), for {lead.name}: {sections}.\n\n"
                "The report, with its charts, is the HTML part of this mail; its figures are attached as figures.csv."
            ),
            html=rendered.html,
            attachments=(
                *(Attachment(f"{cid}.png", "image/png", png, content_id=cid) for cid, png in rendered.images),
                Attachment("figures.csv", "text/csv", rendered.csv.encode()),
            ),
        )
        return await self._mailer.send(message, order_id=None, kind=MAIL_KIND)
