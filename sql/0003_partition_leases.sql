-- payhook schema, version 3: partition ownership for a fleet of processes.
--
-- consumer_members: one row per running payhook process, kept alive by its
--   heartbeat. A member whose expires_at has passed is dead (killed, hung,
--   cut off) and no longer counts when partitions are shared out.
-- partition_leases: one row per (consumer group, topic, partition). `owner`
--   holds the partition until `expires_at` (renewed every heartbeat);
--   `epoch` is the fencing token: it grows by one every time the partition
--   changes hands. A free partition has owner NULL.
-- partition_lease_history: one row per epoch, for audits and tests: who
--   held the partition, from when, and until when the lease was valid.
-- consumer_offsets.lease_epoch: the epoch of the owner that made the last
--   commit.
--
-- Every effect transaction first moves its offset with an UPDATE that
-- requires, and share-locks, a lease row naming this owner and epoch and not
-- yet expired (db::offsets::advance). A takeover changes the lease row, so it
-- waits until that transaction ends, and every later transaction of the old
-- owner finds an epoch it does not hold: a stale owner cannot commit after the
-- new owner has started.

CREATE TABLE consumer_members (
    member_id    uuid        PRIMARY KEY,
    name         text        NOT NULL,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

CREATE TABLE partition_leases (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    owner          uuid,
    epoch          bigint      NOT NULL DEFAULT 0,
    acquired_at    timestamptz,
    expires_at     timestamptz NOT NULL DEFAULT '-infinity',
    PRIMARY KEY (consumer_group, topic, partition)
);

CREATE TABLE partition_lease_history (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    epoch          bigint      NOT NULL,
    owner          uuid        NOT NULL,
    acquired_at    timestamptz NOT NULL,
    valid_until    timestamptz NOT NULL,
    PRIMARY KEY (consumer_group, topic, partition, epoch)
);

ALTER TABLE consumer_offsets ADD COLUMN lease_epoch bigint;
