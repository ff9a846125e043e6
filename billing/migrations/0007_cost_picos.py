"""The ledger keeps exact costs in pico-dollars (1 USD = 10**12): existing micro-dollar costs are multiplied by 10**6.

Budget periods kept by the database gain the remainder of their settled spend below one micro-dollar.
"""

from django.db import migrations, models
from django.db.models import F

PICOS_PER_MICRO = 10**6


def micros_to_picos(apps, schema_editor):
    for name in ("UsageRecord", "UsageRollup"):
        apps.get_model("billing", name).objects.update(cost_picos=F("cost_picos") * PICOS_PER_MICRO)


def picos_to_micros(apps, schema_editor):
    # Back to whole micro-dollars, a started one counted whole (what was charged is never lowered).
    for name in ("UsageRecord", "UsageRollup"):
        model = apps.get_model("billing", name)
        model.objects.update(cost_picos=(F("cost_picos") + PICOS_PER_MICRO - 1) / PICOS_PER_MICRO)


class Migration(migrations.Migration):

    dependencies = [
        ('billing', '0006_end_reasons'),
    ]

    operations = [
        migrations.RenameField(model_name='usagerecord', old_name='cost_micros', new_name='cost_picos'),
        migrations.RenameField(model_name='usagerollup', old_name='cost_micros', new_name='cost_picos'),
        migrations.RunPython(micros_to_picos, picos_to_micros, elidable=False),
        migrations.AlterField(
            model_name='usagerecord',
            name='cost_picos',
            field=models.BigIntegerField(default=0, help_text='Pico-dollars (1 USD = 10**12), exact.'),
        ),
        migrations.AlterField(
            model_name='usagerollup',
            name='cost_picos',
            field=models.BigIntegerField(default=0, help_text='Pico-dollars (1 USD = 10**12), the exact sum of the rows.'),
        ),
        migrations.AlterField(
            model_name='budgetperiod',
            name='spent_micros',
            field=models.BigIntegerField(default=0, help_text='Whole micro-dollars settled.'),
        ),
        migrations.AddField(
            model_name='budgetperiod',
            name='spent_remainder_picos',
            field=models.BigIntegerField(default=0, help_text='Pico-dollars settled beyond spent_micros, 0 to 999,999: carried into it at 10**6.'),
        ),
    ]
