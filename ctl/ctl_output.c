/* Tables, JSON lines and color for sentinelctl: the only place that decides how data
 * looks on stdout. */
#include "ctl_output.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "sentinel/sn_common.h"

#define CTL_TABLE_GAP 2

struct ctl_table {
    size_t column_count;
    char **headers;
    char **cells; /* row-major, rows * column_count */
    size_t row_count;
    size_t row_cap;
};

static bool s_is_tty;
static bool s_is_color;

static char *s_clean(const char *cell);
static void s_print_cell(const char *cell, int width, bool is_last, bool is_tty);

bool ctl_format_parse(const char *name, ctl_format_t *out)
{
    if (!name)
        return false;
    if (strcmp(name, "table") == 0) {
        *out = CTL_FORMAT_TABLE;
        return true;
    }
    if (strcmp(name, "json") == 0) {
        *out = CTL_FORMAT_JSON;
        return true;
    }
    return false;
}

void ctl_output_setup(bool is_no_color)
{
    s_is_tty = isatty(STDOUT_FILENO) == 1;
    const char *no_color = getenv("NO_COLOR");
    const char *force = getenv("CLICOLOR_FORCE");
    const char *clicolor = getenv("CLICOLOR");
    const char *term = getenv("TERM");
    if (is_no_color || (no_color && *no_color))
        s_is_color = false;
    else if (force && *force && strcmp(force, "0") != 0)
        s_is_color = true;
    else if ((clicolor && strcmp(clicolor, "0") == 0) || (term && strcmp(term, "dumb") == 0))
        s_is_color = false;
    else
        s_is_color = s_is_tty;
}

bool ctl_output_is_tty(void)
{
    return s_is_tty;
}

bool ctl_output_is_color(void)
{
    return s_is_color;
}

const char *ctl_color(const char *what)
{
    static const struct {
        const char *name;
        const char *seq;
    } map[] = {{"bold", "\033[1m"},    {"green", "\033[32m"}, {"red", "\033[31m"},
               {"yellow", "\033[33m"}, {"dim", "\033[2m"},    {"reset", "\033[0m"}};
    if (!s_is_color || !what)
        return "";
    for (size_t i = 0; i < SN_ARRAY_LEN(map); i++)
        if (strcmp(map[i].name, what) == 0)
            return map[i].seq;
    return "";
}

ctl_table_t *ctl_table_new(const char *const *headers)
{
    SN_ASSERT(headers && headers[0]);
    ctl_table_t *self = sn_calloc(1, sizeof *self);
    while (headers[self->column_count])
        self->column_count++;
    self->headers = sn_calloc(self->column_count, sizeof(char *));
    for (size_t i = 0; i < self->column_count; i++)
        self->headers[i] = sn_strdup(headers[i]);
    return self;
}

void ctl_table_destroy(ctl_table_t **self_p)
{
    if (!self_p || !*self_p)
        return;
    ctl_table_t *self = *self_p;
    for (size_t i = 0; i < self->column_count; i++)
        free(self->headers[i]);
    for (size_t i = 0; i < self->row_count * self->column_count; i++)
        free(self->cells[i]);
    free(self->headers);
    free(self->cells);
    free(self);
    *self_p = NULL;
}

void ctl_table_add_row(ctl_table_t *self, const char *const *cells, size_t count)
{
    SN_ASSERT(self && cells && count == self->column_count);
    if (self->row_count == self->row_cap) {
        self->row_cap = self->row_cap ? self->row_cap * 2 : 16;
        self->cells = sn_realloc(self->cells, self->row_cap * self->column_count * sizeof(char *));
    }
    char **row = self->cells + self->row_count * self->column_count;
    for (size_t i = 0; i < self->column_count; i++)
        row[i] = s_clean(cells[i]);
    self->row_count++;
}

size_t ctl_table_rows(const ctl_table_t *self)
{
    return self->row_count;
}

void ctl_table_print(const ctl_table_t *self)
{
    SN_ASSERT(self);
    if (!s_is_tty) {
        for (size_t r = 0; r < self->row_count; r++)
            ctl_row_print((const char *const *)self->cells + r * self->column_count, NULL,
                          self->column_count);
        return;
    }
    int *widths = sn_calloc(self->column_count, sizeof(int));
    for (size_t c = 0; c < self->column_count; c++) {
        size_t w = strlen(self->headers[c]);
        for (size_t r = 0; r < self->row_count; r++) {
            size_t cw = strlen(self->cells[r * self->column_count + c]);
            if (cw > w)
                w = cw;
        }
        widths[c] = (int)w;
    }
    fputs(ctl_color("bold"), stdout);
    for (size_t c = 0; c < self->column_count; c++)
        s_print_cell(self->headers[c], widths[c], c + 1 == self->column_count, true);
    fputs(ctl_color("reset"), stdout);
    fputc('\n', stdout);
    for (size_t r = 0; r < self->row_count; r++)
        ctl_row_print((const char *const *)self->cells + r * self->column_count, widths,
                      self->column_count);
    free(widths);
}

void ctl_row_print(const char *const *cells, const int *widths, size_t count)
{
    for (size_t c = 0; c < count; c++) {
        char *cell = s_clean(cells[c]);
        s_print_cell(cell, widths ? widths[c] : 0, c + 1 == count, s_is_tty);
        free(cell);
    }
    fputc('\n', stdout);
    fflush(stdout);
}

void ctl_json_print(const json_t *doc)
{
    char *text = json_dumps(doc, JSON_COMPACT | JSON_ENSURE_ASCII | JSON_PRESERVE_ORDER);
    SN_ASSERT(text);
    fputs(text, stdout);
    fputc('\n', stdout);
    fflush(stdout);
    free(text);
}

void ctl_format_time(long long unix_ms, char *buf, size_t len)
{
    if (unix_ms <= 0) {
        snprintf(buf, len, "-");
        return;
    }
    time_t sec = (time_t)(unix_ms / 1000);
    struct tm tm;
    gmtime_r(&sec, &tm);
    snprintf(buf, len, "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)(unix_ms % 1000));
}

void ctl_format_age(long long ms, char *buf, size_t len)
{
    if (ms < 0)
        ms = 0;
    long long s = ms / 1000;
    if (ms < 1000)
        snprintf(buf, len, "%lldms", ms);
    else if (s < 60)
        snprintf(buf, len, "%llds", s);
    else if (s < 3600)
        snprintf(buf, len, "%lldm%llds", s / 60, s % 60);
    else if (s < 86400)
        snprintf(buf, len, "%lldh%lldm", s / 3600, (s % 3600) / 60);
    else
        snprintf(buf, len, "%lldd%lldh", s / 86400, (s % 86400) / 3600);
}

/* A cell never breaks the row: tabs and line breaks become spaces; NULL and "" become
 * "-" so that tab-separated columns never collapse. */
static char *s_clean(const char *cell)
{
    if (!cell || !*cell)
        return sn_strdup("-");
    char *out = sn_strdup(cell);
    for (char *p = out; *p; p++)
        if (*p == '\t' || *p == '\n' || *p == '\r')
            *p = ' ';
    return out;
}

static void s_print_cell(const char *cell, int width, bool is_last, bool is_tty)
{
    if (!is_tty) {
        fputs(cell, stdout);
        if (!is_last)
            fputc('\t', stdout);
        return;
    }
    if (is_last || width <= 0)
        fputs(cell, stdout);
    else
        fprintf(stdout, "%-*s%*s", width, cell, CTL_TABLE_GAP, "");
    if (!is_last && width <= 0)
        fputs("  ", stdout);
}
