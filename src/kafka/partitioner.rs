//! Key-to-partition mapping that agrees with the Apache Kafka Java client.
//!
//! Every webhook is produced with its `order_id` as the record key, and the
//! consumer relies on all records of one order arriving on one partition, in
//! the order they were produced. That only holds if *every* producer writing
//! to the topic picks the same partition for the same key. Other services,
//! replay tools and ad-hoc scripts may write to these topics with the Java
//! client (its built-in partitioner), librdkafka with
//! `partitioner=murmur2_random` (or `murmur2`), or kafka-go's
//! `Murmur2Balancer`. All of them hash the key bytes with Kafka's variant of
//! MurmurHash2 and take `(hash & 0x7fffffff) % partition_count`. This module
//! reproduces that calculation bit for bit, so ordering per order survives no
//! matter which of these producers wrote a given record.
//!
//! A few points worth keeping in mind when using it:
//!
//! - The hash is over the key *bytes* exactly as they go on the wire. The
//!   other producers must serialize `order_id` the same way (for a string
//!   key, its UTF-8 bytes with no length prefix or quoting).
//! - Only keyed records are covered. For records without a key the Java
//!   client uses sticky/adaptive partitioning and librdkafka's
//!   `murmur2_random` picks a random partition; neither is reproduced here
//!   because it does not affect per-key ordering.
//! - The mapping depends on the partition count. Adding partitions to a
//!   topic moves keys for every client alike, so it is a migration step to
//!   plan, not something this module can paper over.
//!
//! The hash is written against Java's `int` semantics: 32-bit two's
//! complement with silent overflow, and `>>>` as a logical shift. In Rust
//! that means `u32` with `wrapping_mul` and plain `>>`, reinterpreting the
//! result as `i32` only at the end so the signed value matches what
//! `Utils.murmur2` returns.

use std::num::NonZeroU32;

/// Seed used by Kafka's murmur2. Other MurmurHash2 implementations often take
/// a caller-chosen seed; Kafka fixes this one, and compatibility depends on it.
const SEED: u32 = 0x9747_b28c;

/// MurmurHash2 multiplication constant.
const M: u32 = 0x5bd1_e995;

/// MurmurHash2 shift constant.
const R: u32 = 24;

/// Kafka's 32-bit MurmurHash2 of `data`, matching
/// `org.apache.kafka.common.utils.Utils.murmur2` for every input.
///
/// The result is signed because Java's is; use [`to_positive`] before taking
/// a remainder, or call [`partition_for_key`] directly.
#[must_use]
pub fn murmur2(data: &[u8]) -> i32 {
    // Java mixes in `data.length`, an `int`. Arrays there cannot exceed
    // `i32::MAX` elements, so for every input a Java client can hash this
    // conversion is exact; beyond that it keeps the low 32 bits, which is
    // what Java's `int` arithmetic would do as well.
    #[allow(clippy::cast_possible_truncation)]
    let length = data.len() as u32;
    let mut h = SEED ^ length;

    // Body: whole 4-byte blocks, each read little-endian. Java assembles the
    // block from bytes masked with `& 0xff`, so bytes >= 0x80 contribute their
    // unsigned value; reading `u8`s gives the same thing without masking.
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }

    // Tail: the last 1..=3 bytes. Java uses a `switch` whose cases fall
    // through (3 into 2 into 1), and only then multiplies once. Each `if`
    // below is one of those cases; a tail of length 0 skips all of them,
    // including the multiplication.
    let tail = blocks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if let Some(&first) = tail.first() {
        h ^= u32::from(first);
        h = h.wrapping_mul(M);
    }

    // Final avalanche. `>>` on `u32` is the logical shift Java spells `>>>`.
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;

    java_int(h)
}

/// The same 32 bits read as Java's signed `int` (two's complement), without
/// a numeric conversion that could be mistaken for a range change.
const fn java_int(bits: u32) -> i32 {
    i32::from_ne_bytes(bits.to_ne_bytes())
}

/// Clears the sign bit, as Kafka's `Utils.toPositive` does.
///
/// This is deliberately not `abs`: `i32::MIN.abs()` overflows, and more to
/// the point the other clients mask, so masking is what keeps partitions in
/// agreement. Negative inputs map to `n + 2^31`; `i32::MIN` maps to `0`.
#[must_use]
pub const fn to_positive(n: i32) -> i32 {
    n & 0x7fff_ffff
}

/// The partition a record with this key lands on in a topic with
/// `partitions` partitions, as chosen by the Java client's built-in
/// partitioner (`BuiltInPartitioner.partitionForKey`), librdkafka's
/// `murmur2`/`murmur2_random` and kafka-go's `Murmur2Balancer`.
///
/// The partition count must be greater than zero; taking [`NonZeroU32`]
/// makes a zero count (and the division by zero it would cause) impossible
/// to pass. Kafka reports partition counts as `i32`, so convert with
/// `u32::try_from(count).ok().and_then(NonZeroU32::new)` and treat `None` as
/// "topic metadata not usable yet".
///
/// The result is always in `0..partitions` and, like Kafka partition ids,
/// an `i32`.
#[must_use]
pub fn partition_for_key(key: &[u8], partitions: NonZeroU32) -> i32 {
    // `to_positive` leaves a value in `0..=i32::MAX`, so its `u32` form is
    // the same number. The remainder is no larger than that value, so it
    // still fits in `i32` unchanged, whatever the partition count.
    let hash = to_positive(murmur2(key)).unsigned_abs();
    java_int(hash % partitions.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nz(n: u32) -> NonZeroU32 {
        NonZeroU32::new(n).expect("test partition counts are non-zero")
    }

    /// Reinterprets an unsigned hash as Java's signed `int`, for vectors that
    /// their source writes in hex.
    fn signed(bits: u32) -> i32 {
        java_int(bits)
    }

    /// Apache Kafka's own vectors, from `testMurmur2` in
    /// `clients/src/test/java/org/apache/kafka/common/utils/UtilsTest.java`
    /// (apache/kafka, read at commit 1eb7644349cb07139d6a3c1ad1986979647cac99).
    /// The last one is given there as the byte array `{'a', 'b', 'c'}`
    /// rather than a string; the bytes are the same.
    const KAFKA_UTILS_TEST: &[(&[u8], i32)] = &[
        (b"21", -973_932_308),
        (b"foobar", -790_332_482),
        (b"a-little-bit-long-string", -985_981_536),
        (b"a-little-bit-longer-string", -1_486_304_829),
        (
            b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
            -58_897_971,
        ),
        (b"abc", 479_470_107),
    ];

    /// librdkafka's `unittest_murmur2` in `src/rdmurmur2.c`
    /// (confluentinc/librdkafka), whose expected values are named
    /// `java_murmur2_results`. kafka-go's `TestMurmur2` in `balancer_test.go`
    /// carries the same table. The "unaligned" keys are suffixes of one
    /// string, which walks the tail through every length.
    const LIBRDKAFKA_UNITTEST: &[(&[u8], u32)] = &[
        (b"kafka", 0xd067_cf64),
        (b"giberish123456789", 0x8f55_2b0c),
        (b"1234", 0x9fc9_7b14),
        (b"234", 0xe7c0_09ca),
        (b"34", 0x8739_30da),
        (b"4", 0x5a4b_5ca1),
        (b"PreAmbleWillBeRemoved,ThePrePartThatIs", 0x7842_4f1c),
        (b"reAmbleWillBeRemoved,ThePrePartThatIs", 0x4a62_b377),
        (b"eAmbleWillBeRemoved,ThePrePartThatIs", 0xe0e4_e09e),
        (b"AmbleWillBeRemoved,ThePrePartThatIs", 0x62b8_b43f),
        (b"", 0x106e_08d9),
    ];

    /// Every published vector above is ASCII, so none of them would notice a
    /// port that sign-extends bytes >= 0x80 (the bug Java's `& 0xff` guards
    /// against). These were produced by calling `Utils.murmur2` from the
    /// kafka-clients 4.1.1 jar, and cover each tail length with high bytes,
    /// plus a multi-byte UTF-8 key.
    const KAFKA_CLIENTS_4_1_1_HIGH_BYTES: &[(&[u8], i32)] = &[
        (&[0xff], -311_467_685),
        (&[0xff, 0xfe], 1_717_632_651),
        (&[0x80, 0x81, 0x82], -1_975_640_061),
        (&[0xff, 0xff, 0xff, 0xff], 644_171_429),
        (&[0xde, 0xad, 0xbe, 0xef, 0xca, 0xfe, 0xba], -316_507_575),
        ("ünïcødé".as_bytes(), 2_147_241_326),
    ];

    fn assert_hashes(source: &str, cases: &[(&[u8], i32)]) {
        for &(key, expected) in cases {
            assert_eq!(
                murmur2(key),
                expected,
                "{source}: murmur2({:?})",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn matches_kafka_utils_test_vectors() {
        assert_hashes("Kafka UtilsTest.testMurmur2", KAFKA_UTILS_TEST);
    }

    #[test]
    fn matches_librdkafka_java_murmur2_results() {
        let cases: Vec<(&[u8], i32)> = LIBRDKAFKA_UNITTEST
            .iter()
            .map(|&(key, bits)| (key, signed(bits)))
            .collect();
        assert_hashes("librdkafka unittest_murmur2", &cases);
    }

    #[test]
    fn treats_high_bytes_as_unsigned_like_java() {
        assert_hashes("kafka-clients 4.1.1", KAFKA_CLIENTS_4_1_1_HIGH_BYTES);
    }

    #[test]
    fn every_tail_length_is_covered_by_reference_vectors() {
        // The tail handling is the easiest part to get subtly wrong (a missing
        // fallthrough, or multiplying when there is no tail), so make sure
        // the reference vectors exercise all four paths, not just some.
        let mut seen = [0_usize; 4];
        let all = KAFKA_UTILS_TEST
            .iter()
            .copied()
            .chain(
                LIBRDKAFKA_UNITTEST
                    .iter()
                    .map(|&(key, bits)| (key, signed(bits))),
            )
            .chain(KAFKA_CLIENTS_4_1_1_HIGH_BYTES.iter().copied());
        for (key, expected) in all {
            assert_eq!(murmur2(key), expected, "murmur2({key:?})");
            seen[key.len() % 4] += 1;
        }
        for (tail, count) in seen.iter().enumerate() {
            assert!(
                *count >= 3,
                "only {count} reference vectors with a tail of {tail} bytes"
            );
        }
    }

    #[test]
    fn partitions_match_librdkafka_partitioner_test() {
        // librdkafka `tests/0048-partitioner.c`, `do_test_partitioners`: the
        // expected partition for `murmur2`/`murmur2_random` is the positive
        // hash printed by the Java client (`tests/java/Murmur2Cli.java`,
        // `toPositive(Utils.murmur2(key))`) modulo the partition count, which
        // is 7 in quick mode and 17 otherwise. kafka-go's
        // `TestMurmur2Balancer` reuses the 17-partition form.
        let cases: &[(&[u8], u32)] = &[
            (b"", 0x106e_08d9),
            (b"23456", 0x058d_780f),
            (
                b"this is another string with more length to it perhaps",
                0x4f77_03da,
            ),
            (b"hejsan", 0x5ec1_9395),
        ];
        for &(key, positive_hash) in cases {
            assert_eq!(to_positive(murmur2(key)), signed(positive_hash));
            for count in [7, 17] {
                let expected = signed(positive_hash % count);
                assert_eq!(
                    partition_for_key(key, nz(count)),
                    expected,
                    "key {:?} over {count} partitions",
                    String::from_utf8_lossy(key)
                );
            }
        }
    }

    #[test]
    fn partitions_match_kafka_python_vectors() {
        // kafka-python's Murmur2Partitioner test over 1000 partitions, as
        // carried in kafka-go's `TestMurmur2Balancer` (`balancer_test.go`).
        // Also confirmed with `BuiltInPartitioner.partitionForKey` from the
        // kafka-clients 4.1.1 jar.
        let cases: &[(&[u8], i32)] = &[
            (b"", 681),
            (b"a", 524),
            (b"ab", 434),
            (b"abc", 107),
            (b"123456789", 566),
            (&[0x00, b' '], 742),
        ];
        for &(key, expected) in cases {
            assert_eq!(
                partition_for_key(key, nz(1000)),
                expected,
                "key {key:?} over 1000 partitions"
            );
        }
    }

    #[test]
    fn partitions_match_kafka_clients_for_order_like_keys() {
        // `BuiltInPartitioner.partitionForKey(key, 12)` from the kafka-clients
        // 4.1.1 jar, for keys shaped like the ones this service produces.
        let cases: &[(&[u8], i32)] = &[
            (b"ord_1", 9),
            (b"ord_12", 11),
            (b"ord_123", 3),
            (b"ord_1234", 1),
            (b"order-0001", 2),
            (b"7f1c2a4e-8b1d-4c55-9a43-2f0e6b9d1c77", 2),
        ];
        for &(key, expected) in cases {
            assert_eq!(
                partition_for_key(key, nz(12)),
                expected,
                "key {:?} over 12 partitions",
                String::from_utf8_lossy(key)
            );
        }
    }

    #[test]
    fn to_positive_masks_the_sign_bit() {
        assert_eq!(to_positive(0), 0);
        assert_eq!(to_positive(42), 42);
        assert_eq!(to_positive(i32::MAX), i32::MAX);
        assert_eq!(to_positive(-1), i32::MAX);
        assert_eq!(to_positive(i32::MIN), 0);
        // From the Kafka vectors: "21" hashes negative, its positive form is
        // the value librdkafka's Murmur2Cli would print.
        assert_eq!(to_positive(-973_932_308), signed(0x45f2_f8ec));
    }

    #[test]
    fn partition_is_always_in_range() {
        let counts = [
            1,
            2,
            3,
            7,
            12,
            17,
            64,
            1000,
            i32::MAX.unsigned_abs(),
            u32::MAX,
        ];
        for i in 0..500_usize {
            // Vary length (and so the tail path) as well as content.
            let key = format!("order-{i}-{}", "x".repeat(i % 9));
            for count in counts {
                let partition = partition_for_key(key.as_bytes(), nz(count));
                assert!(partition >= 0, "negative partition for {key}");
                assert!(
                    partition.unsigned_abs() < count,
                    "partition {partition} out of range for {count} partitions ({key})"
                );
            }
        }
    }

    #[test]
    fn single_partition_always_zero() {
        for key in [&b""[..], b"a", b"order-1", &[0xff; 33]] {
            assert_eq!(partition_for_key(key, nz(1)), 0);
        }
    }

    #[test]
    fn same_key_same_partition() {
        let key = b"ord_7f1c2a4e";
        let first = partition_for_key(key, nz(24));
        for _ in 0..10 {
            assert_eq!(partition_for_key(key, nz(24)), first);
        }
    }
}
