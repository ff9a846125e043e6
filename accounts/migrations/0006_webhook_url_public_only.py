# State only (no SQL): the webhook URL's validator refuses private, loopback and link-local addresses.

import accounts.webhooks
from django.db import migrations, models


class Migration(migrations.Migration):

    dependencies = [
        ('accounts', '0005_tenant_models_and_pepper'),
    ]

    operations = [
        migrations.AlterField(
            model_name='tenant',
            name='alert_webhook_url',
            field=models.URLField(blank=True, help_text='Budget alerts are also POSTed here as JSON, signed with the secret below. Public addresses only.', validators=[accounts.webhooks.validate_webhook_url]),
        ),
    ]
