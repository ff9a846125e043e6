"""django-redis on a Redis Cluster: the "limits" cache lives with the money state, which may be a cluster.

django-redis has no cluster client of its own; this factory hands it redis-py's, which finds every node from the
one in the URL and sends each key to the node of its slot. The cache only uses single-key commands (and one-key
scripts), so it needs no hash tags.
"""

from __future__ import annotations

from typing import Any

from django_redis.pool import ConnectionFactory


class ClusterConnectionFactory(ConnectionFactory):  # type: ignore[type-arg]
    _clusters: dict[str, Any] = {}

    def connect(self, url: str) -> Any:
        if url not in self._clusters:
            from redis.cluster import RedisCluster

            self._clusters[url] = RedisCluster.from_url(url)
        return self._clusters[url]

    def disconnect(self, connection: Any) -> None:
        connection.close()
