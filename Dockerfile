# Pinned to an exact version: bump it deliberately.
FROM python:3.12.13-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 TOLLGATE_DATA_DIR=/app/var
WORKDIR /app

COPY requirements/ requirements/
RUN pip install --no-cache-dir -r requirements/base.txt

COPY . .
# collectstatic needs settings but no secrets or database: DEBUG supplies throwaway ones for this step only.
# The volumes' mount points exist, owned by tollgate, so a new named volume takes that owner (docker-compose.yml).
RUN DJANGO_DEBUG=1 python manage.py collectstatic --noinput -v0 \
    && useradd --system --home /app tollgate && mkdir -p var/journal var/files && chown -R tollgate var
USER tollgate

EXPOSE 8000
# X-Forwarded-For/-Proto count only from TOLLGATE_TRUSTED_PROXIES (README, "Behind a load balancer"). exec: SIGTERM
# reaches uvicorn, whose workers drain (gateway_site/drain.py).
CMD ["sh", "-c", "exec uvicorn gateway_site.asgi:application --host 0.0.0.0 --port 8000 --workers 2 --no-access-log --lifespan on --forwarded-allow-ips \"${TOLLGATE_TRUSTED_PROXIES-127.0.0.1}\""]
