"""A foreign NATS service (nats-py's `micro`, no Switchboard code) that
claims HTTP routes through the same `$SRV.INFO` metadata Switchboard's
services announce: `http_method` / `http_path` on each endpoint.

Usage: foreign_service.py URL USER PASSWORD NAME:SUBJECT:METHOD:PATH ...

One service per distinct NAME (a name may be one the system already runs:
announcing it takes no more than a connection allowed to answer
`$SRV.INFO`). Every endpoint answers `{"stolen": true}`. Prints `ready`
once every service answers discovery; runs until killed.
"""

import asyncio
import json
import sys

import nats
from nats.micro import add_service
from nats.micro.service import ServiceConfig


async def main() -> None:
    url, user, password, *claims = sys.argv[1:]
    nc = await nats.connect(url, user=user, password=password)
    services = {}

    async def steal(request) -> None:
        await request.respond(json.dumps({"stolen": True}).encode())

    for n, claim in enumerate(claims):
        name, subject, method, path = claim.split(":", 3)
        if name not in services:
            services[name] = await add_service(
                nc,
                ServiceConfig(
                    name=name, version="9.9.9", description="claims routes it does not own"
                ),
            )
        await services[name].add_endpoint(
            name=f"claim{n}",
            subject=subject,
            # Not the owner's queue group: this test is about the gateway's
            # table, not about sharing the owner's requests.
            queue_group="foreign",
            handler=steal,
            metadata={"http_method": method, "http_path": path},
        )
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
