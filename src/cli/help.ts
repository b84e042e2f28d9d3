// The --help texts, one per command.

const common = `Database:
  --db URL          postgres://…, mysql://… (or mariadb://…), sqlite:PATH, or a file
                    path with a / or ending in .sqlite or .db; anything else is a usage
                    error (default: $DATABASE_URL; without either, ./worker-locks.sqlite,
                    a lock on this host only, as a line on stderr says)
  --table NAME      the lock table (default: worker_locks)`

export const help: Readonly<Record<string, string>> = {
  main: `Usage: worker-locks COMMAND [OPTIONS]

Locks between processes and hosts, kept in the database you already have.

Commands:
  migrate           create or upgrade the lock table
  status            show the locks in the table
  release NAME [KEY]  force-release a lock held by anyone
  run NAME [OPTIONS] -- COMMAND [ARGS…]
                    run a command while holding a lock

${common}

Run "worker-locks COMMAND --help" for a command's options, "worker-locks --version"
for the version.`,

  migrate: `Usage: worker-locks migrate [--db URL] [--table NAME]

Applies the shipped migrations (the same files the knex CLI uses) to create or upgrade the
lock table. Safe to run again, and from several hosts at once.

${common}`,

  status: `Usage: worker-locks status [--json] [--db URL] [--table NAME]

Says which database it reads ("database: URL", any password as ***; on stderr with
--json), then shows every lock in the table: name, key, holder, fence, age since its last renewal,
its mode (exclusive for a plain lock, read or write for each holder of a read/write lock, listed
after the plain lock of its name and key: the two count fences apart), and whether it is stale
(not renewed within its holder's own lock timeout, so anyone may take it over). A lock kept by
"run --min-hold" after its command ended shows "(kept)" as its holder. Control characters in
names are shown escaped (\\n, \\x1b, …).

  --json            print a JSON array instead of a table

${common}`,

  release: `Usage: worker-locks release NAME [KEY] [--db URL] [--table NAME]

Deletes the lock NAME (key KEY, default empty) whoever holds it, and prints what was removed:
the plain lock and every holder of the read/write lock of that name and key.
Its holder learns at its next renewal and, under "worker-locks run", stops its command.
Exits 1 if there was no such lock.

${common}`,

  run: `Usage: worker-locks run NAME [--key K] [--wait [SECONDS]] [OPTIONS] -- COMMAND [ARGS…]

Runs COMMAND while holding the lock NAME (key K), renewing it, and releases it when COMMAND
exits. Exits with COMMAND's exit code (128 + n if it died of signal n).

COMMAND runs in a process group of its own, so signals reach everything it starts (like a
background job, it cannot read from the terminal). Whatever it leaves running when it exits
gets SIGTERM (SIGKILL after --grace) before the lock is released.

  --key K           the lock's key (default: empty)
  --wait [SECONDS]  if the lock is busy, wait for it (for at most SECONDS); without
                    --wait a busy lock exits 75 at once
  --lock-timeout S  how long the lock survives if this process dies (default: 120)
  --on-lost=ACTION  what to do if the lock is lost while COMMAND runs: stop (default:
                    SIGTERM, then SIGKILL after --grace, exit 70) or ignore
  --grace S         seconds between SIGTERM and SIGKILL (default: 10)
  --min-hold S      keep the lock taken until S seconds after COMMAND started, even if it
                    exits sooner (not renewed meanwhile, taken by no one), so that hosts
                    whose cron starts the same job a little later skip it: once per
                    schedule, not only one at a time; make S shorter than the schedule's
                    interval (default: 0, released when COMMAND exits)

SIGINT, SIGTERM and SIGHUP are passed on to COMMAND's group; the lock is released after it
exits.

Exit codes: COMMAND's own; 75 lock busy or wait timed out; 70 lock lost; 126 command not
executable; 127 command not found; 2 usage error (a bad --db or DATABASE_URL too); 1 other
errors (database unreachable, table missing: run "worker-locks migrate"), naming the database.

${common}`,
}
