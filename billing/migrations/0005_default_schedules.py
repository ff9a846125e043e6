"""The default beat schedules, created once: operators change or disable them in the admin (Periodic tasks)."""

from django.db import migrations

EVERY = [
    # name, task, every, unit
    ("Release expired budget holds", "billing.tasks.reap_expired_holds", 1, "minutes"),
    ("Roll up usage", "billing.tasks.roll_up_usage", 5, "minutes"),
    ("Send budget alerts", "billing.tasks.check_budget_alerts", 5, "minutes"),
    ("Notify keys that expire within a week", "accounts.tasks.notify_expiring_keys", 1, "hours"),
]
PRUNE = ("Prune the ledger past its retention", "billing.tasks.prune_ledger")


def create_schedules(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    CrontabSchedule = apps.get_model("django_celery_beat", "CrontabSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    for name, task, every, unit in EVERY:
        interval, _ = IntervalSchedule.objects.get_or_create(every=every, period=unit)
        PeriodicTask.objects.get_or_create(name=name, defaults={"task": task, "interval": interval})
    nightly, _ = CrontabSchedule.objects.get_or_create(minute="17", hour="3", day_of_week="*", day_of_month="*",
                                                       month_of_year="*", timezone="UTC")
    PeriodicTask.objects.get_or_create(name=PRUNE[0], defaults={"task": PRUNE[1], "crontab": nightly})


def remove_schedules(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name__in=[name for name, *_ in EVERY] + [PRUNE[0]]).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("billing", "0004_rollups_alerts"),
        ("accounts", "0003_alerts_and_webhooks"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedules, remove_schedules)]
