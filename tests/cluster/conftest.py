"""The cluster tier: one real 6-node Redis Cluster (3 masters, 3 replicas) shared by its tests, emptied per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import RedisClusterTestBed


@pytest.fixture(scope='session')
def _cluster_bed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterTestBed]:
    bed = RedisClusterTestBed(tmp_path_factory.mktemp('cluster'))
    bed.start()
    yield bed
    bed.stop()


@pytest.fixture
def cluster(_cluster_bed: RedisClusterTestBed) -> RedisClusterTestBed:
    """The cluster, healthy, with every master emptied: a failover in an earlier test may have moved them."""
    _cluster_bed.wait_until_healthy()
    _cluster_bed.flushall()
    return _cluster_bed
