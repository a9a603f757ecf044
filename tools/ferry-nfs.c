/*
 * ferry-nfs: the few file operations ferry's `nfs` storage driver needs on an
 * NFS export, through libnfs in user space (QEMU opens the images itself,
 * through its own libnfs driver; no kernel NFS client is involved).
 *
 *   ferry-nfs statvfs SERVER EXPORT        -> "free=<bytes> total=<bytes>"
 *   ferry-nfs exists  SERVER EXPORT FILE   -> exit 0 if FILE exists, 3 if not
 *   ferry-nfs create  SERVER EXPORT FILE   -> creates FILE exclusively (exit 4 if it exists)
 *   ferry-nfs unlink  SERVER EXPORT FILE   -> removes FILE (exit 0 also if it was not there)
 *
 * Any other failure (server unreachable, export refused): a message on stderr, exit 1.
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/statvfs.h>
#include <sys/time.h>
#include <nfsc/libnfs.h>

static int fail(struct nfs_context *nfs, const char *what, int rc) {
    fprintf(stderr, "%s: %s\n", what, nfs_get_error(nfs) && *nfs_get_error(nfs) ? nfs_get_error(nfs) : strerror(-rc));
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 4 || (strcmp(argv[1], "statvfs") != 0 && argc < 5)) {
        fprintf(stderr, "usage: ferry-nfs statvfs|exists|create|unlink SERVER EXPORT [FILE]\n");
        return 2;
    }
    const char *cmd = argv[1], *server = argv[2], *export = argv[3], *file = argc > 4 ? argv[4] : NULL;
    char path[4096];
    if (file) snprintf(path, sizeof path, "/%s", file);
    struct nfs_context *nfs = nfs_init_context();
    if (!nfs) {
        fprintf(stderr, "cannot initialise libnfs\n");
        return 1;
    }
    nfs_set_timeout(nfs, 10000);
    int rc = nfs_mount(nfs, server, export);
    if (rc < 0) return fail(nfs, "mount", rc);
    if (strcmp(cmd, "statvfs") == 0) {
        struct statvfs s;
        rc = nfs_statvfs(nfs, "/", &s);
        if (rc < 0) return fail(nfs, "statvfs", rc);
        printf("free=%" PRIu64 " total=%" PRIu64 "\n", (uint64_t)s.f_bavail * s.f_frsize, (uint64_t)s.f_blocks * s.f_frsize);
    } else if (strcmp(cmd, "exists") == 0) {
        struct nfs_stat_64 st;
        rc = nfs_stat64(nfs, path, &st);
        if (rc == -ENOENT) return 3;
        if (rc < 0) return fail(nfs, "stat", rc);
    } else if (strcmp(cmd, "create") == 0) {
        struct nfsfh *fh;
        rc = nfs_open2(nfs, path, O_CREAT | O_EXCL | O_WRONLY, 0600, &fh);
        if (rc == -EEXIST) return 4;
        if (rc < 0) return fail(nfs, "create", rc);
        nfs_close(nfs, fh);
    } else if (strcmp(cmd, "unlink") == 0) {
        rc = nfs_unlink(nfs, path);
        if (rc < 0 && rc != -ENOENT) return fail(nfs, "unlink", rc);
    } else {
        fprintf(stderr, "unknown command '%s'\n", cmd);
        return 2;
    }
    nfs_destroy_context(nfs);
    return 0;
}
