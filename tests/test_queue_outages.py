"""Outages are waiting, not failing: a Telegram connection lost for longer than a job's whole
budget of attempts and claims fails nothing; the work of an account that is offline, or whose
account is not active (logged out, banned, paused by the operator), is not even claimed.

On the real queue and PostgreSQL; the Telegram side is a stand-in downloader whose "network" the
test cuts and restores.
"""

from __future__ import annotations

import asyncio

import psycopg

from processing_queue import RetryPolicy
from test_queue import (PHOTO, Analyser, Downloader, add_account, add_job, errors, job_row, make_pool,  # noqa: F401
                        matcher, run_until)


class Network:
    """The connection to Telegram: while cut, every download raises what Telethon raises."""

    def __init__(self) -> None:
        self.online = True


class NetworkDownloader(Downloader):
    def __init__(self, network: Network, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.network = network

    async def download(self, job):
        if not self.network.online:
            self.calls.append(job.id)
            raise ConnectionError("Cannot send requests while disconnected")
        return await super().download(job)


# A fast policy with the daemon's budgets: 25 claims, 5 attempts.
OUTAGE_POLICY = RetryPolicy(max_attempts=5, max_claims=25, backoff_base=0.01, backoff_cap=0.05, jitter=0.0,
                            outages=(ConnectionError,))


async def test_a_network_cut_longer_than_the_whole_old_budget_fails_nothing(pool, dlib_db, matcher, faces_dir, tmp_path):
    """The connection drops under the client (it still believes it is connected, so the jobs are
    claimed and meet the error): each job meets the outage far more often than max_claims and
    max_attempts, and all of it finishes once the network is back."""
    account = add_account(dlib_db, "+1")
    jobs = [add_job(dlib_db, i, status="queued", account_id=account) for i in range(4)]
    network = Network()
    network.online = False
    downloader = NetworkDownloader(network, tmp_path, faces_dir / PHOTO)
    workers = make_pool(pool, downloader=downloader, account_ids=lambda: [account], analyser=Analyser(),
                        matcher=matcher, policy=OUTAGE_POLICY)
    task = asyncio.create_task(workers.run())
    try:
        async with asyncio.timeout(60):
            while min(downloader.calls.count(j) for j in jobs) <= 2 * OUTAGE_POLICY.max_claims:
                assert not task.done()
                assert "failed" not in (await workers.queue.statuses(jobs)).values()
                await asyncio.sleep(0.05)
        network.online = True
    finally:
        workers.stop()
        await task
    workers = make_pool(pool, downloader=downloader, account_ids=lambda: [account], analyser=Analyser(),
                        matcher=matcher, policy=OUTAGE_POLICY)
    await run_until(workers, dlib_db, jobs)
    rows = [job_row(dlib_db, j) for j in jobs]
    assert [r["status"] for r in rows] == ["done"] * len(jobs), [r["last_error"] for r in rows]
    assert all(r["attempts"] == 0 for r in rows)
    assert errors(dlib_db) == []                      # an outage is not an error of the job


async def test_an_offline_accounts_downloads_are_not_claimed_until_it_is_back(pool, dlib_db, matcher, faces_dir, tmp_path):
    account = add_account(dlib_db, "+1")
    jobs = [add_job(dlib_db, i, status="queued", account_id=account) for i in range(3)]
    network = Network()
    network.online = False
    downloader = NetworkDownloader(network, tmp_path, faces_dir / PHOTO)
    workers = make_pool(pool, downloader=downloader, account_ids=lambda: [account],
                        account_online=lambda account_id: network.online,
                        analyser=Analyser(), matcher=matcher, policy=OUTAGE_POLICY)
    task = asyncio.create_task(workers.run())
    try:
        await asyncio.sleep(1.5)
        assert downloader.calls == []                  # nothing tried while the client is offline
        assert [job_row(dlib_db, j)["claims"] for j in jobs] == [0, 0, 0]
        network.online = True
        async with asyncio.timeout(20):
            while set((await workers.queue.statuses(jobs)).values()) != {"done"}:
                await asyncio.sleep(0.05)
    finally:
        workers.stop()
        await task
    assert sorted(downloader.calls) == jobs


async def test_the_downloads_of_an_account_that_is_not_active_wait_for_it(pool, dlib_db, matcher, faces_dir, tmp_path):
    """An account logged out, banned or paused (telegram_accounts.status not 'active') keeps its
    jobs queued, untouched, until it is active again; other accounts go on."""
    lost, fine = add_account(dlib_db, "+1"), add_account(dlib_db, "+2")
    with psycopg.connect(dlib_db) as conn:
        conn.execute("UPDATE telegram_accounts SET status = 'error' WHERE id = %s", (lost,))
    waiting = add_job(dlib_db, 1, status="queued", account_id=lost)
    other = add_job(dlib_db, 2, status="queued", account_id=fine)
    downloader = Downloader(tmp_path, faces_dir / PHOTO)
    workers = make_pool(pool, downloader=downloader, account_ids=lambda: [lost, fine], analyser=Analyser(),
                        matcher=matcher, policy=OUTAGE_POLICY)
    await run_until(workers, dlib_db, [other])
    row = job_row(dlib_db, waiting)
    assert row["status"] == "queued" and row["claims"] == 0 and downloader.calls == [other]
    with psycopg.connect(dlib_db) as conn:
        conn.execute("UPDATE telegram_accounts SET status = 'active' WHERE id = %s", (lost,))
    workers = make_pool(pool, downloader=downloader, account_ids=lambda: [lost, fine], analyser=Analyser(),
                        matcher=matcher, policy=OUTAGE_POLICY)
    await run_until(workers, dlib_db, [waiting])
    assert job_row(dlib_db, waiting)["status"] == "done"


class HangingDownloader(Downloader):
    """The first download of each job never answers (a connection that died silently)."""

    async def download(self, job):
        if job.id not in self.calls:
            self.calls.append(job.id)
            await asyncio.Event().wait()
        return await super().download(job)


async def test_a_download_that_never_answers_is_given_up_and_tried_again(pool, dlib_db, matcher, faces_dir, tmp_path):
    account = add_account(dlib_db, "+1")
    jobs = [add_job(dlib_db, i, status="queued", account_id=account) for i in range(3)]
    downloader = HangingDownloader(tmp_path, faces_dir / PHOTO)
    workers = make_pool(pool, downloader=downloader, account_ids=lambda: [account], analyser=Analyser(),
                        matcher=matcher, policy=OUTAGE_POLICY, download_timeout=0.5)
    await run_until(workers, dlib_db, jobs, timeout=20)
    rows = [job_row(dlib_db, j) for j in jobs]
    assert [r["status"] for r in rows] == ["done"] * 3 and sorted(downloader.calls) == sorted(jobs * 2)
    assert {e["error_type"] for e in errors(dlib_db)} == {"TimeoutError"}   # recorded, then done


async def test_a_component_whose_task_group_lost_the_database_is_restarted_not_the_daemon():
    """A component running one task per account (the history sweeps) reports the database going
    away wrapped in an ExceptionGroup; it is an outage all the same: restarted after a pause."""
    import supervisor

    shutdown = supervisor.Shutdown()
    runs = []

    async def run():
        runs.append(1)
        if len(runs) < 3:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(asyncio.sleep(0))
                raise psycopg.OperationalError("server closed the connection unexpectedly")
        await shutdown.requested.wait()

    component = supervisor.Component("history-sweeps", run, lambda: None)
    task = asyncio.create_task(supervisor.supervise(component, shutdown, supervisor.Tuning(restart_delay=0.05)))
    async with asyncio.timeout(5):
        while len(runs) < 3:
            assert not task.done() or task.result() is None
            await asyncio.sleep(0.01)
    shutdown.request("test over")
    async with asyncio.timeout(5):
        await task                                    # returned: no ComponentFailed
    assert len(runs) == 3
