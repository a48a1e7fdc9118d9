/* `sentinelctl keygen DIR [--name NAME]`: a CURVE certificate pair in czmq's zcert format,
 * DIR/NAME (public, 0644) and DIR/NAME_secret (0600). Both files are created with O_EXCL
 * before anything is written, so an existing pair is never overwritten, not even by a
 * concurrent keygen, and the secret is never readable by others, not even for a moment. */
#include "ctl.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <czmq.h>

#define CMD "keygen"
#define CTL_KEYGEN_DEFAULT_NAME "sentinel"

static void s_help(void);
static bool s_name_ok(const char *name);
static int s_create_excl(const char *path, mode_t mode);

int ctl_cmd_keygen(ctl_opts_t *opts, int argc, char **argv)
{
    static const struct option longopts[] = {
        CTL_COMMON_LONGOPTS, {"name", required_argument, NULL, CTL_OPT_NAME}, {NULL, 0, NULL, 0}};
    const char *name = CTL_KEYGEN_DEFAULT_NAME;
    opterr = 0;
    int c;
    while ((c = getopt_long(argc, argv, ":" CTL_COMMON_SHORTOPTS, longopts, NULL)) != -1) {
        int handled = ctl_opts_handle(opts, CMD, c, optarg);
        if (handled < 0)
            return CTL_EXIT_USAGE;
        if (handled > 0)
            continue;
        if (c == CTL_OPT_NAME)
            name = optarg;
        else
            return ctl_bad_option(CMD, c, argv);
    }
    if (opts->is_help) {
        s_help();
        return CTL_EXIT_OK;
    }
    ctl_output_setup(opts->is_no_color);
    if (optind >= argc)
        return ctl_usage_error(CMD, "missing DIR");
    const char *dir = argv[optind++];
    if (optind < argc)
        return ctl_usage_error(CMD, "unexpected argument '%s'", argv[optind]);
    if (!s_name_ok(name))
        return ctl_usage_error(CMD, "bad --name '%s' (letters, digits, '-', '_', '.')", name);

    int rc = CTL_EXIT_FAIL;
    char *pub_path = sn_strdupf("%s/%s", dir, name);
    char *sec_path = sn_strdupf("%s/%s_secret", dir, name);
    zcert_t *cert = NULL;
    bool created_pub = false, created_sec = false;
    if (mkdir(dir, 0700) != 0 && errno != EEXIST) {
        ctl_err(CMD, "cannot create %s: %s", dir, strerror(errno));
        goto out;
    }
    int fd = s_create_excl(sec_path, 0600);
    if (fd < 0)
        goto out;
    created_sec = true;
    close(fd);
    fd = s_create_excl(pub_path, 0644);
    if (fd < 0)
        goto out;
    created_pub = true;
    close(fd);

    cert = zcert_new();
    if (!cert) {
        ctl_err(CMD, "cannot generate a key pair");
        goto out;
    }
    zcert_set_meta(cert, "name", "%s", name);
    zcert_set_meta(cert, "created-by", "sentinelctl keygen");
    /* The files exist with their modes already; zcert_save truncates and writes them. */
    if (zcert_save(cert, pub_path) != 0) {
        ctl_err(CMD, "cannot write %s: %s", pub_path, strerror(errno));
        goto out;
    }
    /* Whatever the umask did to the mode at creation, the secret ends up 0600. */
    if (chmod(sec_path, 0600) != 0 || chmod(pub_path, 0644) != 0) {
        ctl_err(CMD, "cannot set the mode of %s: %s", sec_path, strerror(errno));
        goto out;
    }
    if (opts->format == CTL_FORMAT_JSON) {
        json_t *doc = json_pack("{s:s, s:s, s:s, s:s}", "name", name, "public_file", pub_path,
                                "secret_file", sec_path, "public_key", zcert_public_txt(cert));
        SN_ASSERT(doc);
        ctl_json_print(doc);
        json_decref(doc);
    } else {
        const char *headers[] = {"KEY", "VALUE", NULL};
        ctl_table_t *t = ctl_table_new(headers);
        const char *rows[][2] = {{"name", name},
                                 {"public_file", pub_path},
                                 {"secret_file", sec_path},
                                 {"public_key", zcert_public_txt(cert)}};
        for (size_t i = 0; i < SN_ARRAY_LEN(rows); i++)
            ctl_table_add_row(t, rows[i], SN_ARRAY_LEN(rows[i]));
        ctl_table_print(t);
        ctl_table_destroy(&t);
        fprintf(
            stderr,
            "sentinelctl keygen: put the public key in the config (broker.principals[].public_key"
            " or broker.server_public_key); keep %s private\n",
            sec_path);
    }
    rc = CTL_EXIT_OK;
out:
    if (rc != CTL_EXIT_OK) {
        if (created_pub)
            unlink(pub_path);
        if (created_sec)
            unlink(sec_path);
    }
    zcert_destroy(&cert);
    free(pub_path);
    free(sec_path);
    return rc;
}

static void s_help(void)
{
    printf("usage: sentinelctl keygen DIR [--name NAME]\n\n"
           "Writes a CURVE certificate pair (czmq zcert format): DIR/NAME, the public\n"
           "certificate, and DIR/NAME_secret (mode 0600). NAME defaults to \"%s\".\n"
           "Refuses to overwrite an existing file (exit 1). Prints the public key (Z85)\n"
           "for the config.\n"
           "  -o json   {\"name\",\"public_file\",\"secret_file\",\"public_key\"}\n",
           CTL_KEYGEN_DEFAULT_NAME);
}

/* A file name, not a path: no separators, no leading dot. */
static bool s_name_ok(const char *name)
{
    if (!name || !*name || name[0] == '.' || strlen(name) > 64)
        return false;
    for (const char *p = name; *p; p++) {
        bool ok = (*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') ||
                  (*p >= '0' && *p <= '9') || *p == '-' || *p == '_' || *p == '.';
        if (!ok)
            return false;
    }
    return true;
}

static int s_create_excl(const char *path, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) {
        if (errno == EEXIST)
            ctl_err(CMD, "%s exists; refusing to overwrite it", path);
        else
            ctl_err(CMD, "cannot create %s: %s", path, strerror(errno));
    }
    return fd;
}
