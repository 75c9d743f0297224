"""`python -m bench history`: where an order's history bytes go.

Runs a few happy-path orders on the real stack (or reads a history saved as
JSON, `--from FILE`) and splits every event's bytes, as the server stores
them (`event.ByteSize()`, as bench/actions.py counts them), into payloads by
kind (the order's input, each activity's input and result, each signal,
search attributes, the result...) and the overhead of each event type (ids,
times, task queues, identities, retry policies, timeouts). A field's bytes
are exact: the event's size less its size without that field.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter, defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from google.protobuf.message import Message
from temporalio.api.common.v1 import Payload
from temporalio.api.enums.v1 import EventType
from temporalio.api.history.v1 import HistoryEvent
from temporalio.client import WorkflowHistory
from temporalio.converter import PayloadCodec

RESULTS = Path(__file__).parent / "results"
HISTORIES = Path(__file__).resolve().parents[1] / "tests" / "histories"
# Fields that hold what the application (or its codec) put in: the rest of
# an event is the server's and the SDK's own bookkeeping.
PAYLOAD_TYPES = {
    "temporal.api.common.v1.Payloads",
    "temporal.api.common.v1.Payload",
    "temporal.api.common.v1.Header",
    "temporal.api.common.v1.Memo",
    "temporal.api.common.v1.SearchAttributes",
    "temporal.api.failure.v1.Failure",
}


def _event_type_name(event: HistoryEvent) -> str:
    return EventType.Name(event.event_type).removeprefix("EVENT_TYPE_").lower()


def _field_bytes(message: Message) -> dict[str, int]:
    """Each set field's share of the message's serialized size, tag included."""
    total, shares = message.ByteSize(), {}
    for descriptor, _ in message.ListFields():
        without = type(message)()
        without.CopyFrom(message)
        without.ClearField(descriptor.name)
        shares[descriptor.name] = total - without.ByteSize()
    return shares


def _payload_kind(event: HistoryEvent, attrs: Message, field_name: str, activity_types: dict[int, str]) -> str:
    """A name for what a payload field holds, e.g. `activity send_message input`."""
    kind = _event_type_name(event)
    if kind == "activity_task_scheduled":
        return f"activity {attrs.activity_type.name} input" if field_name == "input" else f"activity {field_name}"
    if kind in ("activity_task_completed", "activity_task_failed"):
        what = "result" if field_name == "result" else field_name
        return f"activity {activity_types.get(attrs.scheduled_event_id, '?')} {what}"
    if kind == "workflow_execution_signaled":
        return f"signal {attrs.signal_name} {field_name}"
    if kind == "signal_external_workflow_execution_initiated":
        return f"signal out {attrs.signal_name} {field_name}"
    if kind == "workflow_execution_started":
        return f"workflow {field_name}" if field_name != "input" else "workflow input (order or carried-over state)"
    if kind == "workflow_execution_completed":
        return "workflow result"
    if kind == "workflow_execution_continued_as_new":
        return "continue-as-new state" if field_name == "input" else f"continue-as-new {field_name}"
    if kind == "upsert_workflow_search_attributes":
        return "search attribute upserts"
    return f"{kind} {field_name}"


@dataclass
class Breakdown:
    histories: int = 0
    events: Counter[str] = field(default_factory=Counter)
    event_bytes: Counter[str] = field(default_factory=Counter)
    # Per event type: the bytes of each overhead field.
    overhead: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    payload_bytes: Counter[str] = field(default_factory=Counter)
    payload_count: Counter[str] = field(default_factory=Counter)

    def add(self, history: WorkflowHistory) -> None:
        self.histories += 1
        activity_types: dict[int, str] = {}
        for event in history.events:
            kind = _event_type_name(event)
            self.events[kind] += 1
            self.event_bytes[kind] += event.ByteSize()
            attrs_name = event.WhichOneof("attributes")
            attrs = getattr(event, attrs_name)
            if kind == "activity_task_scheduled":
                activity_types[event.event_id] = attrs.activity_type.name
            shares = _field_bytes(event)
            for name, size in shares.items():
                if name != attrs_name:
                    self.overhead[kind]["event: " + name] += size
            # The attributes' own tag and length prefix.
            self.overhead[kind]["event: attributes framing"] += shares[attrs_name] - attrs.ByteSize()
            attrs_shares = _field_bytes(attrs)
            for descriptor, _ in attrs.ListFields():
                size = attrs_shares[descriptor.name]
                if descriptor.message_type is not None and descriptor.message_type.full_name in PAYLOAD_TYPES:
                    what = _payload_kind(event, attrs, descriptor.name, activity_types)
                    self.payload_bytes[what] += size
                    self.payload_count[what] += 1
                else:
                    self.overhead[kind][descriptor.name] += size

    def per_history(self, n: int) -> float:
        return n / max(self.histories, 1)

    def report(self) -> str:
        total = sum(self.event_bytes.values())
        payloads = sum(self.payload_bytes.values())
        per = self.per_history
        lines = [
            f"histories: {self.histories}; per history: {per(sum(self.events.values())):.1f} events, "
            f"{per(total):.0f} bytes, of which payloads {per(payloads):.0f} ({100 * payloads / max(total, 1):.0f} %), "
            f"overhead {per(total - payloads):.0f}",
            "",
            "payloads by kind (per history: how many, their bytes; each: bytes per payload; share of all bytes)",
            f"{'kind':58}{'count':>7}{'bytes':>8}{'each':>7}{'share':>7}",
        ]
        for what, size in self.payload_bytes.most_common():
            count = self.payload_count[what]
            lines.append(f"{what[:58]:58}{per(count):>7.1f}{per(size):>8.0f}{size / count:>7.0f}{100 * size / total:>6.1f}%")
        lines += [
            "",
            "events by type (bytes per history; overhead = the event less its payloads)",
            f"{'event type':46}{'count':>7}{'bytes':>8}{'overhead':>9}  largest overhead fields (bytes per event)",
        ]
        for kind, size in self.event_bytes.most_common():
            count = self.events[kind]
            over = sum(self.overhead[kind].values())
            top = ", ".join(f"{name} {b / count:.0f}" for name, b in self.overhead[kind].most_common(5))
            lines.append(f"{kind[:46]:46}{per(count):>7.1f}{per(size):>8.0f}{per(over):>9.0f}  {top}")
        return "\n".join(lines)


async def decoded(history: WorkflowHistory, codec: PayloadCodec) -> WorkflowHistory:
    """A copy of `history` with every payload as the codec decodes it: the
    plain payloads beside the stored ones show what encryption adds."""
    events = []
    for event in history.events:
        copy = HistoryEvent()
        copy.CopyFrom(event)
        await _decode_payloads(copy, codec)
        events.append(copy)
    return WorkflowHistory(history.workflow_id, events)


async def _decode_payloads(message: Message, codec: PayloadCodec) -> None:
    for _, payload in list(payloads_in(message)):
        [plain] = await codec.decode([payload])
        payload.CopyFrom(plain)


def payloads_in(message: Message, path: str = "") -> Iterator[tuple[str, Payload]]:
    """Every payload anywhere in a protobuf message (history events, failures,
    headers, memos), with the path of fields that leads to it."""
    for descriptor, value in message.ListFields():
        if descriptor.message_type is None:
            continue
        if descriptor.message_type.GetOptions().map_entry:
            if descriptor.message_type.fields_by_name["value"].message_type is None:
                continue
            items = list(value.values())
        else:
            items = list(value) if descriptor.is_repeated else [value]
        for item in items:
            if isinstance(item, Payload):
                yield f"{path}.{descriptor.name}", item
            else:
                yield from payloads_in(item, f"{path}.{descriptor.name}")


def deflate_dictionary(histories: Iterable[Path], per_kind: int = 4, longest: int = 2048) -> bytes:
    """A preset dictionary for the codec's deflate (codec/encryption.py),
    from the plain payloads of recorded histories: up to `per_kind`
    distinct serialized payloads of each kind (event type and field), the
    most frequent kinds last (nearest the data, cheapest to refer to), cut to
    deflate's 32 KiB window. Payloads over `longest` bytes are left out: a
    flood's carried-over state would fill the window with one kind. Search attributes are left out: the codec never
    sees them. A dictionary in use never changes: payloads sealed with it
    need it to open (a new one takes a new marker in the codec)."""
    samples: dict[str, list[bytes]] = defaultdict(list)
    frequency: Counter[str] = Counter()
    for path in histories:
        for event in WorkflowHistory.from_json(path.stem, path.read_text()).events:
            for where, payload in _payloads(event, _event_type_name(event)):
                if "search_attributes" in where:
                    continue
                frequency[where] += 1
                serialized = payload.SerializeToString()
                if len(serialized) <= longest and serialized not in samples[where] and len(samples[where]) < per_kind:
                    samples[where].append(serialized)
    return b"".join(s for where in sorted(samples, key=lambda w: (frequency[w], w)) for s in samples[where])[-32 * 1024 :]


def from_file(path: Path) -> Breakdown:
    breakdown = Breakdown()
    breakdown.add(WorkflowHistory.from_json(path.stem, path.read_text()))
    return breakdown


async def live(orders: int, concurrency: int, save: Path | None) -> dict[str, Breakdown]:
    """The order's and the customer's histories of `orders` happy-path bench
    orders, as stored and decoded; with `save`, the last of each is written
    there as JSON (for `--from`, or to read what each payload holds)."""
    from bench.driver import System, Tracker, bench_order, drive, new_run_id
    from bench.stack import start_stack, wait_for_pollers
    from codec import EncryptionCodec

    stack = await start_stack()
    try:
        tracker = Tracker()
        stack.fakes.on_accept = tracker.on_provider_request
        worker = stack.our_worker()
        worker.start()
        await wait_for_pollers(stack)
        system = System(stack.client, floor=False)
        runs, _ = await drive(system, tracker, [bench_order(n, "h" + new_run_id()) for n in range(orders)], concurrency)
        worker.stop()
        codec = EncryptionCodec(stack.payload_keys)
        sides = {name: Breakdown() for name in ("order", "order decoded", "customer", "customer decoded")}
        done = [r for r in runs if r.completed]
        if not done:
            raise SystemExit(f"no order completed: {[r.error for r in runs][:3]}")
        for r in done:
            order = await stack.client.get_workflow_handle(system.workflow_id(r.order_id)).fetch_history()
            customer = await stack.client.get_workflow_handle(system.customer_workflow_id(r.customer_id)).fetch_history()
            sides["order"].add(order)
            sides["order decoded"].add(await decoded(order, codec))
            sides["customer"].add(customer)
            sides["customer decoded"].add(await decoded(customer, codec))
        if save:
            save.mkdir(parents=True, exist_ok=True)
            for name, history in (("order", order), ("customer", customer)):
                for suffix, saved in (("", history), ("-decoded", await decoded(history, codec))):
                    (save / f"history-{name}{suffix}.json").write_text(json.dumps(json.loads(saved.to_json()), indent=1) + "\n")
        return sides
    finally:
        await stack.shutdown()


def main(orders: int, concurrency: int, path: Path | None, save: Path | None, dictionary: Path | None) -> None:
    if dictionary:
        dictionary.write_bytes(deflate_dictionary(sorted(HISTORIES.glob("*.json"))))
        print(f"written: {dictionary} ({dictionary.stat().st_size} bytes)")
        return
    if path:
        print(from_file(path).report())
        return
    sides = asyncio.run(live(orders, concurrency, save))
    text = ""
    for name, breakdown in sides.items():
        how = "payloads decoded (plain JSON, as the worker sees them)" if "decoded" in name else "as stored on the server"
        text += f"== {name.split()[0]}'s workflow, {breakdown.histories} happy-path orders, {how} ==\n{breakdown.report()}\n\n"
    print(text, end="")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "history.txt").write_text(text)
    print(f"written: {RESULTS / 'history.txt'}" + (f", {save}/history-{{order,customer}}{{,-decoded}}.json" if save else ""))
