/*
 * memcheck: proves that a guest's memory survived a live migration.
 *
 * Fills <mib> MiB with a pattern that each 4 KiB page derives from its index
 * and a generation number, keeps rewriting pages round-robin at <rate> MiB/s
 * (bumping their generation, so the pages are dirty for the migration), and
 * verifies the whole area on request. The generation of every page is also
 * kept in a separate table: a page that comes back from the past (an old
 * copy the migration failed to resend) is a mismatch, not only a torn one.
 *
 * Control over UDP (default port 7778), one datagram per command:
 *   verify        -> "verify pages=<n> mismatches=<m> first=<page|-1> rewrites=<k>"
 *   stats         -> "stats pages=<n> rewrites=<k> rate=<MiB/s>"
 *   rate <MiB/s>  -> "rate <MiB/s>"  (change the dirtying rate)
 */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define PAGE_WORDS 512 /* 4096 / 8 */
#define MAGIC 0x6665727279ULL /* "ferry" */

static uint64_t *area;
static uint32_t *generation;
static uint32_t pages;

static inline uint64_t pattern(uint32_t page, uint32_t gen, uint32_t word) {
    uint64_t x = (uint64_t)page * 0x9E3779B97F4A7C15ULL ^ (uint64_t)gen * 0xC2B2AE3D27D4EB4FULL ^ (uint64_t)word * 0x165667B19E3779F9ULL;
    x ^= x >> 29;
    x *= 0xBF58476D1CE4E5B9ULL;
    return x ^ (x >> 32);
}

static void write_page(uint32_t page, uint32_t gen) {
    uint64_t *w = area + (uint64_t)page * PAGE_WORDS;
    w[0] = MAGIC ^ page;
    w[1] = gen;
    for (uint32_t i = 2; i < PAGE_WORDS; i++) w[i] = pattern(page, gen, i);
}

static int page_ok(uint32_t page) {
    const uint64_t *w = area + (uint64_t)page * PAGE_WORDS;
    if (w[0] != (MAGIC ^ page) || w[1] != generation[page]) return 0;
    for (uint32_t i = 2; i < PAGE_WORDS; i++)
        if (w[i] != pattern(page, generation[page], i)) return 0;
    return 1;
}

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv) {
    unsigned mib = 32, port = 7778;
    double rate = 0; /* MiB/s rewritten */
    for (int i = 1; i + 1 < argc; i += 2) {
        if (!strcmp(argv[i], "--mib")) mib = (unsigned)atoi(argv[i + 1]);
        else if (!strcmp(argv[i], "--rate")) rate = atof(argv[i + 1]);
        else if (!strcmp(argv[i], "--port")) port = (unsigned)atoi(argv[i + 1]);
        else { fprintf(stderr, "memcheck: unknown option %s (use --mib N --rate MiB/s --port P)\n", argv[i]); return 2; }
    }
    pages = mib * 256;
    area = mmap(NULL, (size_t)pages * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    generation = calloc(pages, sizeof *generation);
    if (area == MAP_FAILED || !generation) { fprintf(stderr, "memcheck: cannot allocate %u MiB\n", mib); return 1; }
    for (uint32_t p = 0; p < pages; p++) write_page(p, 0);

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY) };
    if (fd < 0 || bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("memcheck: bind"); return 1; }
    printf("memcheck: %u MiB filled, rewriting %.1f MiB/s, udp port %u\n", mib, rate, port);
    fflush(stdout);

    uint32_t cursor = 0;
    uint64_t rewrites = 0;
    double last = now_s(), owed = 0;
    struct pollfd pfd = { .fd = fd, .events = POLLIN };
    for (;;) {
        int ready = poll(&pfd, 1, 10);
        double t = now_s();
        owed += (t - last) * rate * 256.0; /* pages owed at <rate> MiB/s */
        last = t;
        if (owed > pages) owed = pages;
        while (owed >= 1.0) {
            write_page(cursor, ++generation[cursor]);
            cursor = (cursor + 1) % pages;
            rewrites++;
            owed -= 1.0;
        }
        if (ready <= 0) continue;

        char in[128], out[256];
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(fd, in, sizeof in - 1, 0, (struct sockaddr *)&peer, &plen);
        if (n <= 0) continue;
        in[n] = 0;
        int len;
        if (!strncmp(in, "verify", 6)) {
            uint32_t bad = 0; long first = -1;
            for (uint32_t p = 0; p < pages; p++)
                if (!page_ok(p)) { if (first < 0) first = p; bad++; }
            len = snprintf(out, sizeof out, "verify pages=%u mismatches=%u first=%ld rewrites=%llu", pages, bad, first, (unsigned long long)rewrites);
            last = now_s(); /* verifying is not time owed to dirtying */
        } else if (!strncmp(in, "stats", 5)) {
            len = snprintf(out, sizeof out, "stats pages=%u rewrites=%llu rate=%.1f", pages, (unsigned long long)rewrites, rate);
        } else if (!strncmp(in, "rate ", 5)) {
            rate = atof(in + 5);
            if (rate < 0) rate = 0;
            len = snprintf(out, sizeof out, "rate %.1f", rate);
        } else {
            len = snprintf(out, sizeof out, "error unknown command (use verify, stats, rate <MiB/s>)");
        }
        sendto(fd, out, (size_t)len, 0, (struct sockaddr *)&peer, plen);
    }
}
