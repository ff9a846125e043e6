"""The stored responses job's beat schedule, created once: operators change or disable it in the admin (Periodic
tasks). It fails background responses whose worker was lost and deletes expired stored responses."""

from django.db import migrations

NAME, TASK, EVERY = "Tend stored responses", "batches.tend_stored_responses", 60


def create_schedule(apps, schema_editor):
    IntervalSchedule = apps.get_model("django_celery_beat", "IntervalSchedule")
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    interval, _ = IntervalSchedule.objects.get_or_create(every=EVERY, period="seconds")
    PeriodicTask.objects.get_or_create(name=NAME, defaults={"task": TASK, "interval": interval})


def remove_schedule(apps, schema_editor):
    PeriodicTask = apps.get_model("django_celery_beat", "PeriodicTask")
    PeriodicTask.objects.filter(name=NAME).delete()


class Migration(migrations.Migration):
    dependencies = [
        ("proxy", "0005_provider_kinds_and_stored_responses"),
        ("django_celery_beat", "0019_alter_periodictasks_options"),
    ]

    operations = [migrations.RunPython(create_schedule, remove_schedule)]
