/*
 * diskcheck: proves that a guest's disk survived a live migration: no lost
 * write, no torn block, no block from the past.
 *
 *   diskcheck --dev /dev/vda --port 7779 --rate N [--mib M]
 *
 * Works on the first M MiB of the device (default: all of it) in 4 KiB
 * blocks, opened O_DIRECT|O_DSYNC: a write counts as completed only once the
 * device acknowledged it durably. Every written block carries
 *
 *   u64 magic, u64 block index, u64 sequence number (global, +1 per write),
 *   508 u64 of payload derived from (index, seq), u64 checksum of the rest.
 *
 * A table in RAM holds, per block, the seq of its last completed write (0:
 * never written, which must read back as zeros, like a fresh qcow2/raw
 * volume). That table migrates with the guest's RAM: after a migration the
 * disk must match it. The writer rewrites N blocks per second in a
 * pseudo-random order that visits every block once per cycle; a write that
 * fails (EIO) is counted, leaves the table alone, and makes the block accept
 * either its old content or that of the failed write until the next
 * completed write.
 *
 * Control over UDP (default port 7779), one datagram per command, one reply:
 *   stats    -> "stats blocks=<n> writes=<completed block writes> written=<distinct blocks ever written>
 *                seq=<last seq> errors=<write errors> rate=<N>"          (one line)
 *   rate N   -> "rate N"   (blocks per second; 0: idle)
 *   verify   -> "verify blocks=<n> ok=<n> lost=<n> torn=<n> foreign=<n> first=<first bad block|-1> ms=<elapsed>"
 *               lost:    a valid block older than the table says, or zeros where a write completed
 *               torn:    magic/checksum/payload invalid (and not an all-zero never-written block)
 *               foreign: a valid block newer than the table says or with another block's index,
 *                        or data in a never-written block
 *   fill M   -> "fill mib=<M> ms=<elapsed>"  writes every block of the first M MiB (0 or more
 *               than the area: all of it) with fresh seqs, 1 MiB per write
 *   startup  -> "startup valid=<n> torn=<n> foreign=<n> maxseq=<S> ms=<elapsed>"  what the disk held
 *               when diskcheck started: it takes a disk it finds as it is (a guest that rebooted,
 *               or was recovered on another host from a replica, goes on where the disk is): every
 *               valid block enters the table, seqs continue above the highest found
 * For tests only (they damage the disk behind the table's back):
 *   corrupt B -> "corrupt B"          block B becomes a torn block (a valid one, half overwritten)
 *   rewind B  -> "rewind B seq=<S>"   block B gets an older valid version (seq S < the table's)
 * Anything else -> "error ...". The writer pauses while a command runs.
 * The probe resends a request every second until it gets a reply; a repeat of
 * verify/fill/corrupt/rewind from the same sender within 0.5 s of the reply
 * gets the same reply again instead of running a second time.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/fs.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define BLOCK 4096
#define WORDS (BLOCK / 8)
#define CHUNK_BLOCKS 256 /* 1 MiB: the unit of verify reads and fill writes */
#define MAGIC 0x6b73696479727266ULL /* "ferrydisk" (truncated, little-endian) */

static int dev = -1;
static uint64_t blocks;          /* blocks in the area */
static uint64_t *expected;       /* seq of the last completed write per block, 0: never written */
static uint64_t *failed;         /* highest seq of a failed write since the last completed one, 0: none */
static uint64_t seq;             /* last seq handed out */
static uint64_t writes, written, errors;
static uint64_t *chunk;          /* CHUNK_BLOCKS blocks, aligned for O_DIRECT */

static inline uint64_t mix(uint64_t x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ULL;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBULL;
    return x ^ (x >> 31);
}

/* Fletcher-like: every word counts, and so does its position. */
static inline uint64_t checksum(const uint64_t *w) {
    uint64_t a = 0x243F6A8885A308D3ULL, b = 0;
    for (int i = 0; i < WORDS - 1; i++) { a += w[i]; b += a; }
    return mix(a ^ mix(b));
}

static void make_block(uint64_t *w, uint64_t index, uint64_t s) {
    uint64_t h = mix(index * 0x9E3779B97F4A7C15ULL ^ mix(s));
    w[0] = MAGIC;
    w[1] = index;
    w[2] = s;
    for (int i = 3; i < WORDS - 1; i++) { h += 0x9E3779B97F4A7C15ULL; w[i] = h ^ (h >> 29); }
    w[WORDS - 1] = checksum(w);
}

/* 1: a well-formed block (header, payload and checksum agree), 0: torn. */
static int block_valid(const uint64_t *w) {
    if (w[0] != MAGIC || w[WORDS - 1] != checksum(w)) return 0;
    uint64_t h = mix(w[1] * 0x9E3779B97F4A7C15ULL ^ mix(w[2]));
    for (int i = 3; i < WORDS - 1; i++) { h += 0x9E3779B97F4A7C15ULL; if (w[i] != (h ^ (h >> 29))) return 0; }
    return 1;
}

static int all_zero(const uint64_t *w) {
    for (int i = 0; i < WORDS; i++) if (w[i]) return 0;
    return 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Writes n consecutive blocks from `first`, already built in buf; 0 on success. */
static int write_blocks(const uint64_t *buf, uint64_t first, uint64_t n) {
    ssize_t r = pwrite(dev, buf, n * BLOCK, (off_t)(first * BLOCK));
    return r == (ssize_t)(n * BLOCK) ? 0 : -1;
}

static void record(uint64_t first, uint64_t n, const uint64_t *seqs_of, int ok) {
    for (uint64_t i = 0; i < n; i++) {
        uint64_t b = first + i, s = seqs_of[i * WORDS + 2];
        if (ok) {
            if (!expected[b]) written++;
            expected[b] = s;
            failed[b] = 0;
            writes++;
        } else {
            failed[b] = s;
        }
    }
    if (!ok) errors++;
}

/* One writer step: a fresh version of block b. */
static void write_one(uint64_t b) {
    make_block(chunk, b, ++seq);
    record(b, 1, chunk, write_blocks(chunk, b, 1) == 0);
}

/* Writes the first `n` blocks of the area sequentially with fresh seqs. */
static void fill(uint64_t n) {
    for (uint64_t first = 0; first < n; first += CHUNK_BLOCKS) {
        uint64_t count = n - first < CHUNK_BLOCKS ? n - first : CHUNK_BLOCKS;
        for (uint64_t i = 0; i < count; i++) make_block(chunk + i * WORDS, first + i, ++seq);
        record(first, count, chunk, write_blocks(chunk, first, count) == 0);
    }
}

struct verdict { uint64_t ok, lost, torn, foreign; long long first; };

static void judge(struct verdict *v, uint64_t b, const uint64_t *w) {
    uint64_t e = expected[b], f = failed[b];
    enum { OK, LOST, TORN, FOREIGN } kind;
    if (all_zero(w)) kind = e == 0 ? OK : LOST;
    else if (!block_valid(w)) kind = TORN;
    else if (w[1] != b) kind = FOREIGN;
    else if (w[2] == e) kind = OK;
    else if (f && w[2] > e && w[2] <= f) kind = OK;    /* a write that reported failure but landed */
    else if (e == 0) kind = FOREIGN;
    else kind = w[2] < e ? LOST : FOREIGN;
    if (kind == OK) { v->ok++; return; }
    if (kind == LOST) v->lost++;
    else if (kind == TORN) v->torn++;
    else v->foreign++;
    if (v->first < 0) v->first = (long long)b;
}

/* Reads the whole area; a chunk that cannot be read counts all its blocks as lost. */
static void verify(struct verdict *v) {
    memset(v, 0, sizeof *v);
    v->first = -1;
    for (uint64_t first = 0; first < blocks; first += CHUNK_BLOCKS) {
        uint64_t count = blocks - first < CHUNK_BLOCKS ? blocks - first : CHUNK_BLOCKS;
        ssize_t r = pread(dev, chunk, count * BLOCK, (off_t)(first * BLOCK));
        if (r != (ssize_t)(count * BLOCK)) {
            fprintf(stderr, "diskcheck: read of blocks %llu+%llu failed: %s\n", (unsigned long long)first,
                    (unsigned long long)count, r < 0 ? strerror(errno) : "short read");
            v->lost += count;
            if (v->first < 0) v->first = (long long)first;
            continue;
        }
        for (uint64_t i = 0; i < count; i++) judge(v, first + i, chunk + i * WORDS);
    }
}

/* At start: the table from what the disk holds (all zeros on a new disk). */
struct adoption { uint64_t valid, torn, foreign, maxseq; double ms; };

static void adopt(struct adoption *a) {
    double started = now_s();
    memset(a, 0, sizeof *a);
    for (uint64_t first = 0; first < blocks; first += CHUNK_BLOCKS) {
        uint64_t count = blocks - first < CHUNK_BLOCKS ? blocks - first : CHUNK_BLOCKS;
        if (pread(dev, chunk, count * BLOCK, (off_t)(first * BLOCK)) != (ssize_t)(count * BLOCK)) continue;
        for (uint64_t i = 0; i < count; i++) {
            const uint64_t *w = chunk + i * WORDS;
            if (all_zero(w)) continue;
            if (!block_valid(w)) { a->torn++; continue; }
            if (w[1] != first + i) { a->foreign++; continue; }
            a->valid++;
            expected[first + i] = w[2];
            if (w[2] > a->maxseq) a->maxseq = w[2];
        }
    }
    written = a->valid;
    seq = a->maxseq;
    a->ms = (now_s() - started) * 1000;
}

static int parse_block(const char *s, uint64_t *b) {
    char *end;
    unsigned long long x = strtoull(s, &end, 10);
    if (end == s || *end || x >= blocks) return -1;
    *b = x;
    return 0;
}

static unsigned long long gcd(unsigned long long a, unsigned long long b) {
    while (b) { unsigned long long t = a % b; a = b; b = t; }
    return a;
}

int main(int argc, char **argv) {
    const char *path = "/dev/vda";
    unsigned port = 7779;
    double rate = 0; /* blocks per second */
    long long mib = 0;
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--dev")) path = argv[i + 1];
        else if (!strcmp(argv[i], "--port")) port = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rate")) rate = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--mib")) mib = atoll(argv[i + 1]);
        else { fprintf(stderr, "diskcheck: unknown option %s (use --dev PATH --port P --rate BLOCKS/s [--mib M])\n", argv[i]); return 2; }
    }
    if (rate < 0) rate = 0;

    dev = open(path, O_RDWR | O_DIRECT | O_DSYNC);
    if (dev < 0) { fprintf(stderr, "diskcheck: cannot open %s: %s\n", path, strerror(errno)); return 1; }
    uint64_t size = 0;
    struct stat st;
    if (fstat(dev, &st) == 0 && S_ISREG(st.st_mode)) size = (uint64_t)st.st_size;
    else if (ioctl(dev, BLKGETSIZE64, &size) < 0) { fprintf(stderr, "diskcheck: BLKGETSIZE64 on %s: %s\n", path, strerror(errno)); return 1; }
    if (mib > 0 && (uint64_t)mib * 1048576 < size) size = (uint64_t)mib * 1048576;
    blocks = size / BLOCK;
    if (!blocks) { fprintf(stderr, "diskcheck: %s is smaller than one block\n", path); return 1; }
    expected = calloc(blocks, sizeof *expected);
    failed = calloc(blocks, sizeof *failed);
    if (!expected || !failed || posix_memalign((void **)&chunk, BLOCK, CHUNK_BLOCKS * BLOCK)) {
        fprintf(stderr, "diskcheck: cannot allocate the table for %llu blocks\n", (unsigned long long)blocks);
        return 1;
    }

    struct adoption startup;
    adopt(&startup);

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY) };
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("diskcheck: bind"); return 1; }
    printf("diskcheck: %s, %llu blocks (%llu MiB), %llu valid blocks found (highest seq %llu, %llu torn, %llu foreign), writing %.0f blocks/s, udp port %u\n",
           path, (unsigned long long)blocks, (unsigned long long)(blocks / 256), (unsigned long long)startup.valid,
           (unsigned long long)startup.maxseq, (unsigned long long)startup.torn, (unsigned long long)startup.foreign, rate, port);
    fflush(stdout);

    /* Writer order: block = (start + k * step) mod blocks with step coprime to blocks, a full cycle. */
    uint64_t step = (0x9E3779B97F4A7C15ULL ^ mix((uint64_t)time(NULL))) % blocks;
    if (step == 0) step = 1;
    while (gcd(step, blocks) != 1) step = step + 1 < blocks ? step + 1 : 1;
    uint64_t cursor = mix(step) % blocks;

    /* The last reply to an expensive or damaging command, for the probe's resends. */
    struct sockaddr_in last_peer = { 0 };
    char last_in[128] = "", last_out[256] = "";
    double last_at = -1e9;

    double last = now_s(), owed = 0;
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    for (;;) {
        int ready = poll(&pfd, 1, rate > 0 && owed >= 1.0 ? 0 : 10);
        double t = now_s();
        owed += (t - last) * rate;
        last = t;
        if (owed > rate + 1) owed = rate + 1; /* a stall is not made up for beyond one second's worth */
        /* Write what is owed, but look at the socket at least every 10 ms. */
        while (owed >= 1.0 && now_s() - t < 0.01) {
            write_one(cursor);
            cursor = (cursor + step) % blocks;
            owed -= 1.0;
        }
        if (ready <= 0) continue;

        char in[128], out[256];
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(fd, in, sizeof in - 1, 0, (struct sockaddr *)&peer, &plen);
        if (n <= 0) continue;
        in[n] = 0;
        while (n > 0 && (in[n - 1] == '\n' || in[n - 1] == '\r')) in[--n] = 0;
        int len, remember = 0, resend = 0;
        uint64_t b;
        double started = now_s();
        if (started - last_at < 0.5 && peer.sin_addr.s_addr == last_peer.sin_addr.s_addr && peer.sin_port == last_peer.sin_port &&
            !strcmp(in, last_in)) {
            resend = 1; /* of the request just answered */
            len = (int)strlen(last_out);
            memcpy(out, last_out, (size_t)len + 1);
        } else if (!strcmp(in, "stats")) {
            len = snprintf(out, sizeof out, "stats blocks=%llu writes=%llu written=%llu seq=%llu errors=%llu rate=%.0f",
                           (unsigned long long)blocks, (unsigned long long)writes, (unsigned long long)written,
                           (unsigned long long)seq, (unsigned long long)errors, rate);
        } else if (!strcmp(in, "startup")) {
            len = snprintf(out, sizeof out, "startup valid=%llu torn=%llu foreign=%llu maxseq=%llu ms=%.0f", (unsigned long long)startup.valid,
                           (unsigned long long)startup.torn, (unsigned long long)startup.foreign, (unsigned long long)startup.maxseq, startup.ms);
        } else if (!strncmp(in, "rate ", 5)) {
            rate = atof(in + 5);
            if (rate < 0) rate = 0;
            owed = 0;
            len = snprintf(out, sizeof out, "rate %.0f", rate);
        } else if (!strcmp(in, "verify")) {
            struct verdict v;
            verify(&v);
            len = snprintf(out, sizeof out, "verify blocks=%llu ok=%llu lost=%llu torn=%llu foreign=%llu first=%lld ms=%.0f",
                           (unsigned long long)blocks, (unsigned long long)v.ok, (unsigned long long)v.lost,
                           (unsigned long long)v.torn, (unsigned long long)v.foreign, v.first, (now_s() - started) * 1000);
            remember = 1;
        } else if (!strncmp(in, "fill", 4) && (in[4] == 0 || in[4] == ' ')) {
            long long m = atoll(in + 4);
            uint64_t count = m <= 0 || (uint64_t)m * 256 > blocks ? blocks : (uint64_t)m * 256;
            fill(count);
            len = snprintf(out, sizeof out, "fill mib=%llu ms=%.0f", (unsigned long long)(count / 256), (now_s() - started) * 1000);
            remember = 1;
        } else if (!strncmp(in, "corrupt ", 8) && parse_block(in + 8, &b) == 0) {
            /* A valid version the table never hears of, then garbage over its second half: torn. */
            make_block(chunk, b, seq + 1);
            memset((char *)chunk + BLOCK / 2, 0x55, BLOCK / 2);
            int rc = write_blocks(chunk, b, 1);
            len = rc ? snprintf(out, sizeof out, "error corrupt %llu: %s", (unsigned long long)b, strerror(errno))
                     : snprintf(out, sizeof out, "corrupt %llu", (unsigned long long)b);
            remember = 1;
        } else if (!strncmp(in, "rewind ", 7) && parse_block(in + 7, &b) == 0) {
            /* The table must know a version to be older than: write one first if it has none. */
            if (!expected[b]) write_one(b);
            uint64_t old = expected[b] ? expected[b] - 1 : 0;
            make_block(chunk, b, old);
            int rc = expected[b] ? write_blocks(chunk, b, 1) : (errno = EIO, -1);
            len = rc ? snprintf(out, sizeof out, "error rewind %llu: %s", (unsigned long long)b, strerror(errno))
                     : snprintf(out, sizeof out, "rewind %llu seq=%llu", (unsigned long long)b, (unsigned long long)old);
            remember = 1;
        } else if (!strncmp(in, "corrupt ", 8) || !strncmp(in, "rewind ", 7)) {
            len = snprintf(out, sizeof out, "error '%.40s': the block must be a number in 0..%llu", in, (unsigned long long)(blocks - 1));
        } else {
            len = snprintf(out, sizeof out, "error unknown command '%.40s' (use stats, startup, rate <blocks/s>, verify, fill <MiB>; "
                                            "tests only: corrupt <block>, rewind <block>; blocks 0..%llu)",
                           in, (unsigned long long)(blocks - 1));
        }
        sendto(fd, out, (size_t)len, 0, (struct sockaddr *)&peer, plen);
        if (remember) {
            last_peer = peer;
            snprintf(last_in, sizeof last_in, "%s", in);
            snprintf(last_out, sizeof last_out, "%s", out);
        }
        if (remember || resend) last_at = now_s();
        last = now_s(); /* time spent on a command is not owed to the writer */
    }
}
