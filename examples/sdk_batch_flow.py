"""The seed notebook's Batch API flow with the official openai SDK, against any endpoint.

    python -m engine serve --port 8000 &          # or any OpenAI-compatible Batch API
    python examples/sdk_batch_flow.py http://127.0.0.1:8000/v1

Builds a JSONL file of chat requests, uploads it (files.create, purpose="batch"), creates a batch
(batches.create), polls it (batches.retrieve) and downloads the output (files.content), exactly
as a client of OpenAI or kluster.ai would. The key comes from OPENAI_API_KEY (any value for the
embedded server).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import sys
import time
from pathlib import Path

from openai import OpenAI

SYSTEM_PROMPT = (
    "You are a helpful assistant who classifies movie genres based on the provided description. "
    "Choose one of the following options: Action, Adventure, Animation, Biography, Comedy, Crime, Drama, "
    "Family, Fantasy, Film-Noir, History, Horror, Music, Musical, Mystery, Romance, Sci-Fi, Sport, Thriller, "
    "War, Western. Provide your response as a single word with the matching genre. Don't include punctuation."
)


def requests(rows: int) -> bytes:
    data = Path(__file__).parent / "imdb" / "imdb_top_1000.csv"
    with data.open(encoding="utf-8") as source:
        overviews = [row["Overview"] for row in itertools.islice(csv.DictReader(source), rows)]
    lines = [
        {
            "custom_id": f"movie-{index}",
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "klusterai/Meta-Llama-3.1-8B-Instruct-Turbo",
                "temperature": 0,
                "messages": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": overview}],
            },
        }
        for index, overview in enumerate(overviews)
    ]
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


def main() -> None:
    base_url = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:8000/v1"
    client = OpenAI(base_url=base_url, api_key=os.environ.get("OPENAI_API_KEY", "none"))
    uploaded = client.files.create(file=("requests.jsonl", io.BytesIO(requests(20))), purpose="batch")
    print(f"uploaded {uploaded.id} ({uploaded.bytes} bytes)")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    print(f"batch {batch.id}: {batch.status}")
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        time.sleep(0.5)
        batch = client.batches.retrieve(batch.id)
        counts = batch.request_counts
        print(f"batch {batch.id}: {batch.status} {counts.completed if counts else 0}/{counts.total if counts else 0}")
    if batch.output_file_id is None:
        print(f"no output: {batch.status} {batch.errors}")
        raise SystemExit(1)
    for line in client.files.content(batch.output_file_id).text.splitlines():
        result = json.loads(line)
        answer = result["response"]["body"]["choices"][0]["message"]["content"]
        print(f"{result['custom_id']}: {answer}")


if __name__ == "__main__":
    main()
