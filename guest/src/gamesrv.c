/*
 * gamesrv: a game-server stand-in.
 *
 * Answers every UDP datagram at once with
 *     "tick=<n> boot=<id> echo=<first bytes of the request>"
 * <n> is the server's frame counter (100 frames/s of the guest's monotonic
 * clock since this process started): it keeps growing across a live
 * migration and starts again from 0 if the guest or the server restarts.
 * <id> is random per process start, so a client can tell "same server"
 * from "a new one" without trusting the counter alone.
 */
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static unsigned long long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (unsigned long long)ts.tv_sec * 1000ULL + ts.tv_nsec / 1000000ULL;
}

int main(int argc, char **argv) {
    int port = argc > 1 ? atoi(argv[1]) : 7777;
    unsigned int boot_id = 0;
    int rnd = open("/dev/urandom", O_RDONLY);
    if (rnd < 0 || read(rnd, &boot_id, sizeof boot_id) != sizeof boot_id) boot_id = (unsigned int)now_ms();
    if (rnd >= 0) close(rnd);

    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) { perror("gamesrv: socket"); return 1; }
    struct sockaddr_in addr = { .sin_family = AF_INET, .sin_port = htons(port), .sin_addr.s_addr = htonl(INADDR_ANY) };
    if (bind(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("gamesrv: bind"); return 1; }
    printf("gamesrv: listening on udp port %d boot=%08x\n", port, boot_id);
    fflush(stdout);

    unsigned long long start = now_ms();
    char in[512], out[640];
    for (;;) {
        struct sockaddr_in peer;
        socklen_t plen = sizeof peer;
        ssize_t n = recvfrom(fd, in, sizeof in - 1, 0, (struct sockaddr *)&peer, &plen);
        if (n < 0) continue;
        in[n] = 0;
        if (n > 64) in[64] = 0;
        for (char *p = in; *p; p++) if (*p == '\n' || *p == '\r') { *p = 0; break; }
        int len = snprintf(out, sizeof out, "tick=%llu boot=%08x echo=%s", (now_ms() - start) / 10, boot_id, in);
        sendto(fd, out, (size_t)len, 0, (struct sockaddr *)&peer, plen);
    }
}
