"""Management API: GET /api/queues/, the batch queues' counts per queue and per tenant (operators only)."""

from __future__ import annotations

from typing import Any

from drf_spectacular.utils import extend_schema
from rest_framework import permissions, serializers
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from accounts.api import StaffOnly

from . import stats


class BatchStatusCountsSerializer(serializers.Serializer):
    """How many batches are in each status."""

    validating = serializers.IntegerField()
    failed = serializers.IntegerField()
    in_progress = serializers.IntegerField()
    finalizing = serializers.IntegerField()
    completed = serializers.IntegerField()
    expired = serializers.IntegerField()
    cancelling = serializers.IntegerField()
    cancelled = serializers.IntegerField()


class CountsSerializer(serializers.Serializer):
    depth = serializers.IntegerField(help_text="Lines of validating, in-progress and cancelling batches not claimed "
                                               "by a worker yet (a validating batch's lines are not known yet).")
    waiting_batches = serializers.IntegerField(help_text="Batches still validating, whose lines are not in depth yet.")
    running = serializers.IntegerField(help_text="Lines a worker is executing now.")
    done = serializers.IntegerField(help_text="Lines that succeeded, over every batch kept.")
    failed = serializers.IntegerField(help_text="Lines that failed or never ran (cancelled, expired), over every "
                                                "batch kept.")
    batches = BatchStatusCountsSerializer()


class QueueCountsSerializer(CountsSerializer):
    queue = serializers.CharField(help_text="The Celery queue's name.")
    tier = serializers.CharField(allow_null=True, help_text="The tenant tier it serves (high, default, low); null "
                                                            "for a queue a model route names.")


class TenantQueueCountsSerializer(CountsSerializer):
    queue = serializers.CharField()
    tenant = serializers.CharField(help_text="The tenant's slug.")


class QueuesSerializer(serializers.Serializer):
    queues = QueueCountsSerializer(many=True, help_text="Every configured queue, and any queue a route names.")
    tenants = TenantQueueCountsSerializer(many=True, help_text="One row per queue and tenant that has batches.")


def queues_payload(found: stats.QueueStats) -> dict[str, Any]:
    tiers = stats.tiers()
    return {
        "queues": [{"queue": queue, "tier": tiers.get(queue), **counts.as_dict()}
                   for queue, counts in found.queues.items()],
        "tenants": [{"queue": queue, "tenant": tenant, **counts.as_dict()}
                    for (queue, tenant), counts in found.tenants.items()],
    }


class QueuesView(APIView):
    """The batch queues: lines waiting, running, done and failed, and batches per status; per queue and per
    tenant. Read from the database when asked (two grouped queries)."""

    permission_classes = [permissions.IsAuthenticated, StaffOnly]

    # One object, not a list of rows: a plain view, so the schema does not describe it as a page.
    @extend_schema(operation_id="queues_list", responses={200: QueuesSerializer})
    def get(self, request: Request) -> Response:
        return Response(queues_payload(stats.queue_stats()))
