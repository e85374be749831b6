"""The job queue and its workers, by topic (this module only gathers their public names, for the
modules and tests that import them from here):

- job_queue.py: the queue in PostgreSQL: claims, leases, settling jobs, recording errors;
- retry_policy.py: what happens to work that raised (which errors wait, which count, which are
  permanent, the backoff), as data shared by the queue, the uploader and the action applier;
- worker_pool.py: the workers of one process: bounded downloads and analyses, heartbeat, stop;
- queue_metrics.py: counters and queue-depth gauges in processing_metrics;
- staging_cleanup.py: the daemon's own leftovers in the staging area, and nothing else.
"""

from job_queue import (CONFLICT, DB_UNAVAILABLE, FINAL_STATUSES, Job, JobQueue, LeaseLost,  # noqa: F401
                       default_owner, describe_error, record_error)
from queue_metrics import QueueStats, report_metrics  # noqa: F401
from retry_policy import Decision, JobSkipped, PermanentJobError, RetryLater, RetryPolicy  # noqa: F401
from staging_cleanup import remove_orphaned_files  # noqa: F401
from worker_pool import Analyser, Downloader, Matcher, WorkerConfig, WorkerPool  # noqa: F401
