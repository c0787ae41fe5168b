"""
Writes the seed corpora in C{seeds/}, one directory per target, mostly from
the usage vectors (provider answers in their real shapes: C{tests.vectors}).  The
seeds are committed: the tests and the targets read only C{seeds/}, never the
vectors.  Run it again when the vectors or an input format change:

    .venv/bin/python tests/fuzz/make_seeds.py
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from tests.fuzz import (
    fuzz_config,
    fuzz_metadata,
    fuzz_providers,
    fuzz_target,
    fuzz_usage,
)
from tests.fuzz.harness import HERE, SEEDS, make_input
from tests.vectors import load_vector, vector_files

AZURE_CHAT = "/openai/deployments/gpt-4o/chat/completions?api-version=2024-10-21"


def vectors() -> dict[str, dict[str, Any]]:
    """Every vector in C{tests/vectors}, by name."""
    return {os.path.basename(path)[:-5]: load_vector(path) for path in vector_files()}


def body(vector: dict[str, Any]) -> bytes:
    return str(vector["response_body"]).encode("utf-8")


def crlf(text: bytes) -> bytes:
    return text.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


def gemini_array(sse: bytes) -> bytes:
    """A Gemini SSE stream's objects as the JSON array Gemini streams without alt=sse."""
    items = re.findall(rb"^data: (.*?)\r?$", sse, re.M)
    return b"[" + b"\r\n,\r\n".join(items) + b"]"


def stream_seeds(all_vectors: dict[str, dict[str, Any]]) -> dict[str, dict[str, bytes]]:
    streams = {
        name: body(v)
        for name, v in all_vectors.items()
        if v["response_content_type"].startswith("text/event-stream")
    }
    chat = body(all_vectors["03_openai_chat_stream_include_usage"])
    gemini = body(all_vectors["26_gemini_stream_sse_thoughts"])
    sse = {name: make_input(text) for name, text in streams.items()}
    sse["crlf_chat_cut"] = make_input(crlf(chat), lengths=bytes([6, 0, 40]))
    sse["cr_only_chat"] = make_input(chat.replace(b"\n", b"\r"))
    sse["small_cap_anthropic"] = make_input(
        body(all_vectors["20_anthropic_stream_cache_5m_1h_and_read"]), options=1
    )
    sse["bom_comments"] = make_input(
        b"\xef\xbb\xbf: hello\n\nevent: a\ndata\ndata: x\nid: 1\nretry: 5\n\n: bye\n"
    )
    arrays = {
        "gemini_stream": make_input(gemini_array(gemini)),
        "gemini_stream_cut": make_input(gemini_array(gemini), lengths=bytes([0, 13, 200])),
        "scalars": make_input(b' [1, -2.5e3, "a\\"]", true ,null,[{"x":[]}], {}]'),
        "small_cap": make_input(b'[{"a": "' + b"x" * 70 + b'"}, 1]', options=1),
        "not_array": make_input(b'{"error": {"code": 429}}'),
    }
    filters = {
        "chat_usage": make_input(chat),
        "chat_usage_crlf_cut": make_input(crlf(chat), lengths=bytes([9, 0])),
        "chat_no_usage": make_input(body(all_vectors["04_openai_chat_stream_no_include_usage"])),
    }
    objects = {
        name: make_input(body(v))
        for name, v in all_vectors.items()
        if v["response_content_type"].startswith("application/json")
    }
    objects["tricky_strings"] = make_input(
        b'\xef\xbb\xbf{"a\\"": "}]\\\\", "b": [[], {"c": "["}], "a\\"": 2 }', lengths=bytes([0, 2])
    )
    objects["not_object"] = make_input(b'[{"usage": 1}]')
    return {"sse": sse, "json_array": arrays, "json_members": objects, "usage_filter": filters}


def usage_seeds(all_vectors: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    seeds = {
        name: fuzz_usage.make_seed(
            v["provider"],
            v["request_path"],
            v["response_status"],
            v["response_content_type"],
            body(v),
        )
        for name, v in all_vectors.items()
    }
    gemini = all_vectors["26_gemini_stream_sse_thoughts"]
    seeds["gemini_json_array"] = fuzz_usage.make_seed(
        "gemini",
        gemini["request_path"].split("?")[0],
        200,
        "application/json; charset=UTF-8",
        gemini_array(body(gemini)),
    )
    chat = all_vectors["03_openai_chat_stream_include_usage"]
    seeds["azure_chat_stream"] = fuzz_usage.make_seed(
        "azure", AZURE_CHAT, 200, chat["response_content_type"], body(chat)
    )
    return seeds


def metadata_seeds() -> dict[str, bytes]:
    lines = [b"X-Majordomo-User-Id: u-42", b"x-majordomo-feature: summarise", b"Host: x"]
    return {
        "typical": fuzz_metadata.make_seed(lines),
        "alias_and_reserved": fuzz_metadata.make_seed(
            [b"X-Majordomo-Provider-Alias: eu", b"X-Majordomo-Key: mj-1", *lines]
        ),
        "raw_odd_bytes": fuzz_metadata.make_seed(
            [b"X-MAJORDOMO-\xdf: \xff\xfe", b"x-majordomo--: v", b"X-Majordomo-A: \x00"],
            options=fuzz_metadata.RAW,
        ),
        "many": fuzz_metadata.make_seed([b"X-Majordomo-N%d: %d" % (i, i) for i in range(33)]),
    }


def config_seeds() -> dict[str, bytes]:
    with open(os.path.join(HERE, "..", "..", "etc", "majordomo.yaml"), "rb") as f:
        example = f.read()
    small = b"server:\n  port: 7680\n  body_timeout: 250ms\nproviders:\n  azure:\n    base_url: https://x.openai.azure.com\n"
    return {
        "example": fuzz_config.make_seed(example),
        "small_with_env": fuzz_config.make_seed(
            small,
            {
                "server.port": "8080",
                "server.reuse_port": "yes",
                "upstream.idle_timeout": "5m",
                "storage.postgres.password": "p\udcff",
            },
        ),
        "anchors_tags": fuzz_config.make_seed(
            b"server: &s {host: !!str 1, port: 0x1F}\nstorage: {batch_size: 1e3}\n"
            b"logging: {body_storage: s3}\ns3: {enabled: !!bool yes, bucket: *s}\n"
        ),
        "base_urls": fuzz_config.make_seed(
            b"providers:\n  gemini:\n    base_url: http://[::1]:8080/v1beta\n",
            {
                "providers.openai.base_url": "https://api.openai.com/v1#x",
                "providers.anthropic.base_url": "http://user@h\u00e9te:99/?q",
            },
        ),
        "empty": fuzz_config.make_seed(b""),
    }


def providers_seeds(all_vectors: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    seeds = {
        name: fuzz_providers.make_seed(v["request_path"], json.dumps(v["request_body"]).encode())
        for name, v in all_vectors.items()
    }
    seeds["gemini_key"] = fuzz_providers.make_seed(
        "/v1beta/models/gemini-2.5-pro:streamGenerateContent?alt=sse&key=AIzaSECRET"
    )
    seeds["azure_key"] = fuzz_providers.make_seed(AZURE_CHAT + "&api-key=SECRETKEY")
    seeds["odd_query"] = fuzz_providers.make_seed("/v1/models?a=1;KEY=S3CR3T&&api_key=&k%65y=X")
    return seeds


def target_seeds(all_vectors: dict[str, dict[str, Any]]) -> dict[str, bytes]:
    seeds = {
        name: fuzz_target.make_seed(v["request_path"].encode(), base)
        for base, (name, v) in enumerate(all_vectors.items())
    }
    hostile = [
        b"1/v1/chat/completions",
        b".evil.example/v1/chat/completions",
        b"2:40002/v1/chat/completions",
        b"http://evil.example/v1/messages",
        b"/v1/%2e%2e/admin?x=1",
        b"/v1/models?a=1?key=X#frag",
        b"//evil.example/v1",
        b"/v1/\\evil",
        b"/v1/\x7f\xb0",
    ]
    for i, target in enumerate(hostile):
        seeds[f"hostile_{i}"] = fuzz_target.make_seed(target, i)
    return seeds


def write(target: str, seeds: dict[str, bytes]) -> None:
    """Write the seeds of C{target}; other files there (regression inputs) stay."""
    directory = os.path.join(SEEDS, target)
    os.makedirs(directory, exist_ok=True)
    for name, data in seeds.items():
        with open(os.path.join(directory, name), "wb") as f:
            f.write(data)
    print(f"{target}: {len(seeds)} seeds")


def main() -> None:
    all_vectors = vectors()
    for target, seeds in stream_seeds(all_vectors).items():
        write(target, seeds)
    write("usage", usage_seeds(all_vectors))
    write("metadata", metadata_seeds())
    write("config", config_seeds())
    write("providers", providers_seeds(all_vectors))
    write("target", target_seeds(all_vectors))


if __name__ == "__main__":
    main()
