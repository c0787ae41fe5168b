"""twistd plugin: `twistd majordomo` runs Majordomo Gateway."""

from twisted.application.service import ServiceMaker

majordomo = ServiceMaker(
    "Majordomo Gateway",
    "majordomo.tap",
    "An LLM gateway that records the usage and cost of every request.",
    "majordomo",
)
