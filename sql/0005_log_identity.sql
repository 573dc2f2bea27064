-- payhook schema, version 5: the log's identity, and dead letters of
-- waiting disputes one at a time.
--
-- consumer_offsets.topic_id: the Kafka topic ID (Metadata v10+) of the log
--   the stored offset belongs to. A topic deleted and created again under
--   the same name has a new ID, and its offsets start over: the partition
--   stops instead of reading the new log from the old position. NULL for
--   rows written before this version: the first start adopts the ID the
--   broker has then.
-- consumer_offsets.last_record_digest: SHA-256 of the record at
--   next_offset - 1 (key, value, timestamp), the last one this consumer
--   handled. Every fetch starts one record early and compares: a log whose
--   history changed under the consumer (re-created, or truncated by an
--   unclean leader election) no longer holds that record there, and the
--   partition stops instead of applying records at positions it already
--   passed in another history. NULL until the first commit after a reset.
-- parked_disputes.dead_letter_claimed_until: set when the sweeper takes a
--   dispute whose payment never came (DISPUTE_PAYMENT_WAIT). From then on
--   no payment releases it (it is on its way to the dead-letter topic); the
--   sweeper publishes its dead letter outside any transaction and deletes
--   the row after the broker's acknowledgement. A sweeper that dies in
--   between leaves the claim to expire, and the next sweep publishes again:
--   a dispute may be dead-lettered twice, never both applied and
--   dead-lettered.

ALTER TABLE consumer_offsets
    ADD COLUMN topic_id           uuid,
    ADD COLUMN last_record_digest bytea;

ALTER TABLE parked_disputes
    ADD COLUMN dead_letter_claimed_until timestamptz;
