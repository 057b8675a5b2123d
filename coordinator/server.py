"""The composition root of a replica: a ``CoordinatorNode`` and the gRPC
services it answers (``coordinator.servicers``). The node knows nothing of
the servicers; the servicers call the node; only this module knows both."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

from coordinator.node import CoordinatorNode, NodeConfig
from coordinator.servicers import AgentServicer, CoordinatorServicer
from hsm.v1 import agent_pb2_grpc, coordinator_pb2_grpc


def services(node: CoordinatorNode) -> Callable[[grpc.aio.Server], None]:
    """What ``CoordinatorNode.start`` registers on its server: the
    Coordinator API and the agents' AgentService, both served by *node*."""

    def register(server: grpc.aio.Server) -> None:
        coordinator_pb2_grpc.add_CoordinatorServicer_to_server(CoordinatorServicer(node), server)
        agent_pb2_grpc.add_AgentServiceServicer_to_server(AgentServicer(node), server)

    return register


async def start_replica(config: NodeConfig, clock: Callable[[], float] = time.time) -> CoordinatorNode:
    """A replica serving: its shards open, its API and agent service up."""
    node = CoordinatorNode(config, clock)
    await node.start(services(node))
    return node
