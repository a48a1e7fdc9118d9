/* sentinelctl's output: tables for people and stable JSON for programs, following the CLI
 * contract (contracts/sse-and-metrics.md §d.2). A table on a terminal is aligned, with a
 * bold header when color is on; when stdout is not a terminal it is tab-separated with no
 * header, no color and no truncation, so `cut -f` works. JSON documents are printed one
 * per line (NDJSON for streams). Color is decided once per process (ctl_output_setup).
 * Single-threaded. */
#ifndef CTL_OUTPUT_H
#define CTL_OUTPUT_H

#include <stdbool.h>
#include <stdio.h>

#include <jansson.h>

typedef enum { CTL_FORMAT_TABLE = 0, CTL_FORMAT_JSON } ctl_format_t;

/* Parses "table" or "json"; false if unknown. */
bool ctl_format_parse(const char *name, ctl_format_t *out);

/* Decides, once, whether stdout is a terminal and whether to use color: off with
 * @is_no_color, a non-empty NO_COLOR, CLICOLOR=0 or TERM=dumb; on with a CLICOLOR_FORCE
 * other than "" and "0"; otherwise on when stdout is a terminal. */
void ctl_output_setup(bool is_no_color);
bool ctl_output_is_tty(void);
bool ctl_output_is_color(void);

/* ANSI sequence for @what ("bold", "green", "red", "yellow", "dim", "reset") when color
 * is on, "" otherwise. Static strings. */
const char *ctl_color(const char *what);

/* A table collected in memory and printed at once (aligned columns need every row). */
typedef struct ctl_table ctl_table_t;

/* A table with the NULL-terminated column @headers (copied). */
ctl_table_t *ctl_table_new(const char *const *headers);
/* Frees, sets *self_p = NULL. NULL-safe. */
void ctl_table_destroy(ctl_table_t **self_p);
/* Appends one row of @count cells, which must equal the number of headers (asserted);
 * cells are copied; NULL or "" prints "-". */
void ctl_table_add_row(ctl_table_t *self, const char *const *cells, size_t count);
/* Number of rows added. */
size_t ctl_table_rows(const ctl_table_t *self);
/* Prints to stdout in the mode chosen by ctl_output_setup. */
void ctl_table_print(const ctl_table_t *self);

/* Prints one row immediately (streams: `events -f`): on a terminal padded to @widths
 * (NULL = no padding), else tab-separated. @count cells; NULL cells print "-". Flushes. */
void ctl_row_print(const char *const *cells, const int *widths, size_t count);

/* Prints @doc (borrowed) on one line to stdout and flushes; the stable JSON form. */
void ctl_json_print(const json_t *doc);

/* Formats @unix_ms as "2026-12-03T07:25:32.123Z" into @buf (>= 32 bytes). */
void ctl_format_time(long long unix_ms, char *buf, size_t len);
/* Formats a duration in ms as "850ms", "12s", "3m4s", "2h5m", "3d4h" into @buf. */
void ctl_format_age(long long ms, char *buf, size_t len);

#endif
