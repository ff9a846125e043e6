"""Files and batches: OpenAI's queued path. A batch's lines run on Celery workers, never in the web processes."""

from __future__ import annotations

import secrets
import string

from django.db import models
from django.db.models import Q
from django.utils import timezone

from accounts.models import ApiKey, Tenant

_ALPHABET = string.ascii_letters + string.digits


def public_id(prefix: str) -> str:
    """An id in OpenAI's style (``file-…``, ``batch_…``): random, so one tenant cannot guess another's."""
    return prefix + "".join(secrets.choice(_ALPHABET) for _ in range(24))


def new_file_id() -> str:
    return public_id("file-")


def new_batch_id() -> str:
    return public_id("batch_")


class File(models.Model):
    """An uploaded file (purpose ``batch``) or one a batch wrote (``batch_output``). The bytes live in storage."""

    class Purpose(models.TextChoices):
        BATCH = "batch"
        BATCH_OUTPUT = "batch_output"

    public_id = models.CharField(max_length=40, unique=True, default=new_file_id)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    key = models.ForeignKey(ApiKey, null=True, blank=True, on_delete=models.SET_NULL, related_name="+",
                            help_text="The key that uploaded it; empty for files a batch wrote.")
    purpose = models.CharField(max_length=32, choices=Purpose.choices)
    filename = models.CharField(max_length=255)
    bytes = models.BigIntegerField(default=0)
    storage_name = models.CharField(max_length=500, help_text="Where the content lives in the files storage.")
    created_at = models.DateTimeField(default=timezone.now)
    expires_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        indexes = [models.Index(fields=["tenant", "created_at"], name="file_tenant_time")]

    def __str__(self) -> str:
        return f"{self.public_id} {self.filename}"


class Batch(models.Model):
    """A batch of requests from one input file, run line by line on the queue of the tenant's tier."""

    class Status(models.TextChoices):
        VALIDATING = "validating"
        FAILED = "failed"
        IN_PROGRESS = "in_progress"
        FINALIZING = "finalizing"
        COMPLETED = "completed"
        EXPIRED = "expired"
        CANCELLING = "cancelling"
        CANCELLED = "cancelled"

    class Endpoint(models.TextChoices):
        CHAT = "/v1/chat/completions"
        COMPLETIONS = "/v1/completions"
        EMBEDDINGS = "/v1/embeddings"

    public_id = models.CharField(max_length=40, unique=True, default=new_batch_id)
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    key = models.ForeignKey(ApiKey, on_delete=models.PROTECT, related_name="+",
                            help_text="The key that created the batch: its lines run with its permissions and limits.")
    endpoint = models.CharField(max_length=32, choices=Endpoint.choices)
    input_file = models.ForeignKey(File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    input_file_public_id = models.CharField(max_length=40)
    output_file = models.ForeignKey(File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    error_file = models.ForeignKey(File, null=True, blank=True, on_delete=models.SET_NULL, related_name="+")
    completion_window = models.CharField(max_length=8, default="24h")
    metadata = models.JSONField(null=True, blank=True)
    model = models.CharField(max_length=200, blank=True, help_text="The model every line asks for (set by validation).")
    queue = models.CharField(max_length=64, help_text="The Celery queue its lines run on.")
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.VALIDATING)
    errors = models.JSONField(null=True, blank=True, help_text="Validation errors, as OpenAI reports them.")
    total = models.PositiveIntegerField(default=0)
    completed = models.PositiveIntegerField(default=0)
    failed = models.PositiveIntegerField(default=0)
    parts = models.PositiveIntegerField(default=0, help_text="How many parts the lines are split into for workers.")
    created_at = models.DateTimeField(default=timezone.now)
    in_progress_at = models.DateTimeField(null=True, blank=True)
    expires_at = models.DateTimeField(null=True, blank=True)
    finalizing_at = models.DateTimeField(null=True, blank=True)
    completed_at = models.DateTimeField(null=True, blank=True)
    failed_at = models.DateTimeField(null=True, blank=True)
    expired_at = models.DateTimeField(null=True, blank=True)
    cancelling_at = models.DateTimeField(null=True, blank=True)
    cancelled_at = models.DateTimeField(null=True, blank=True)
    validation_sent_at = models.DateTimeField(
        null=True, blank=True, help_text="When the upkeep job last sent its validation again (empty: sent once, "
        "when it was created).")
    validation_resends = models.PositiveIntegerField(default=0, help_text="How many times its validation was sent again.")

    class Meta:
        verbose_name_plural = "batches"
        indexes = [
            models.Index(fields=["tenant", "created_at"], name="batch_tenant_time"),
            models.Index(fields=["status"], name="batch_status"),
        ]

    def __str__(self) -> str:
        return self.public_id


class BatchPart(models.Model):
    """A slice of a batch's lines that one worker runs at a time, under a lease it renews while it runs.

    A part whose lease ran out (its worker died) is handed to another worker by the batch upkeep job.
    """

    class State(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        DONE = "done"

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="part_rows")
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    number = models.PositiveIntegerField()
    first_line = models.PositiveIntegerField(help_text="Index of its first line (0-based, in the input file).")
    last_line = models.PositiveIntegerField(help_text="Index after its last line.")
    state = models.CharField(max_length=8, choices=State.choices, default=State.PENDING)
    worker = models.CharField(max_length=200, blank=True, help_text="Who holds the lease.")
    lease_expires_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True, help_text="When its task was last sent to the queue.")
    resends = models.PositiveIntegerField(default=0, help_text="How many times its task was sent again since it was "
                                          "last sent for a worker to take (each wait is longer when the queue's "
                                          "length cannot be read).")

    class Meta:
        constraints = [models.UniqueConstraint(fields=["batch", "number"], name="batch_part_unique")]
        indexes = [models.Index(fields=["state", "lease_expires_at"], name="batch_part_state")]

    def __str__(self) -> str:
        return f"{self.batch_id}#{self.number}"


class BatchLine(models.Model):
    """One line of a batch that a worker claimed. Claiming inserts the row, so a line never runs twice."""

    class State(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"

    batch = models.ForeignKey(Batch, on_delete=models.CASCADE, related_name="lines")
    tenant = models.ForeignKey(Tenant, on_delete=models.PROTECT, related_name="+")
    index = models.PositiveIntegerField(help_text="0-based line number in the input file.")
    custom_id = models.CharField(max_length=200)
    state = models.CharField(max_length=16, choices=State.choices, default=State.RUNNING)
    status_code = models.PositiveSmallIntegerField(null=True, blank=True)
    request_id = models.CharField(max_length=32, blank=True, help_text="The ledger row's request id.")
    result = models.TextField(blank=True, help_text="Its line of the output or error file (JSON).")
    created_at = models.DateTimeField(default=timezone.now)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["batch", "custom_id"], name="batch_line_custom_id"),
            models.UniqueConstraint(fields=["batch", "index"], name="batch_line_index"),
        ]
        indexes = [
            models.Index(fields=["batch", "state"], name="batch_line_state"),
            models.Index(fields=["state"], condition=Q(state="running"), name="batch_line_running"),
        ]

    def __str__(self) -> str:
        return f"{self.batch_id}:{self.custom_id}"
