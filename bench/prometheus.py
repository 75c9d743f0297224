"""Reading a Prometheus endpoint (worker.py's METRICS_PORT, `orders web`'s
WEB_METRICS_PORT) as a scraper would: for the drills' figures and the tests."""

from __future__ import annotations

import asyncio
import re
import socket
import urllib.request
from dataclasses import dataclass

SAMPLE = re.compile(r"^(?P<name>[A-Za-z_:][\w:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$")
LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class Sample:
    name: str
    labels: dict[str, str]
    value: float


def parse(text: str) -> list[Sample]:
    """The samples of the text exposition format; comments skipped."""
    samples = []
    for line in text.splitlines():
        match = None if line.startswith("#") else SAMPLE.match(line)
        if match:
            samples.append(Sample(match["name"], dict(LABEL.findall(match["labels"] or "")), float(match["value"])))
    return samples


def total(samples: list[Sample], name: str, **labels: str) -> float:
    """The sum of `name` over every series carrying these labels."""
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


async def scrape(port: int, host: str = "127.0.0.1") -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10) as response:
            return response.read().decode()

    return await asyncio.to_thread(get)


def free_port() -> int:
    """A port nobody listens on now, for a metrics endpoint."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
