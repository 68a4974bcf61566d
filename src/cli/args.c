/* Table-driven option parsing and help text (see args.h). */
#include "cli/args.h"

#include <ctype.h>
#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/* Column where an option's help starts, and the width help is wrapped to. */
#define HELP_COLUMN 30
#define HELP_WIDTH 100

static int usage(FILE *err, const char *cmd, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int usage(FILE *err, const char *cmd, const char *fmt, ...)
{
    if (err) {
        va_list ap;
        va_start(ap, fmt);
        fprintf(err, "mattn %s: ", cmd);
        vfprintf(err, fmt, ap);
        fprintf(err, "\n(see 'mattn %s --help')\n", cmd);
        va_end(ap);
    }
    return MATTN__CLI_EXIT_USAGE;
}

int mattn__opts_find(const mattn__opt *opts, size_t n, const char *name)
{
    for (size_t i = 0; i < n; i++)
        if (opts[i].kind != MATTN__OPT_SECTION && strcmp(opts[i].name, name) == 0)
            return (int)i;
    return -1;
}

/* Edit distance, for "did you mean" (option names are short). */
static size_t edit_distance(const char *a, size_t la, const char *b)
{
    size_t lb = strlen(b);
    if (la > 63 || lb > 63)
        return 64;
    size_t row[64];
    for (size_t j = 0; j <= lb; j++)
        row[j] = j;
    for (size_t i = 1; i <= la; i++) {
        size_t diag = row[0];
        row[0] = i;
        for (size_t j = 1; j <= lb; j++) {
            size_t up = row[j];
            size_t best = diag + (a[i - 1] != b[j - 1]);
            if (up + 1 < best)
                best = up + 1;
            if (row[j - 1] + 1 < best)
                best = row[j - 1] + 1;
            row[j] = best;
            diag = up;
        }
    }
    return row[lb];
}

static const char *suggest(const mattn__opt *opts, size_t n, const char *name, size_t len)
{
    const char *best = NULL;
    size_t best_d = len / 3 + 1 < 2 ? 2 : len / 3 + 1;
    for (size_t i = 0; i < n; i++) {
        if (opts[i].kind == MATTN__OPT_SECTION)
            continue;
        size_t d = edit_distance(name, len, opts[i].name);
        if (d <= best_d)
            best = opts[i].name, best_d = d;
    }
    return best;
}

static int parse_i64(const char *text, int64_t *out)
{
    if (text[0] == '\0' || isspace((unsigned char)text[0]))
        return -1;
    char *end;
    errno = 0;
    long long v = strtoll(text, &end, 10);
    if (*end != '\0' || errno == ERANGE)
        return -1;
    *out = (int64_t)v;
    return 0;
}

/* Writes the value of one option into dst; returns 0 or a usage error. */
static int parse_value(const char *cmd, const mattn__opt *o, const char *text, void *dst,
                       FILE *err)
{
    char *field = (char *)dst + o->offset;
    switch (o->kind) {
    case MATTN__OPT_INT: {
        int64_t v;
        if (parse_i64(text, &v))
            return usage(err, cmd, "--%s: '%s' is not an integer", o->name, text);
        if (v < o->imin || v > o->imax)
            return usage(err, cmd, "--%s: %" PRId64 " is outside [%" PRId64 ", %" PRId64 "]",
                         o->name, v, o->imin, o->imax);
        memcpy(field, &v, sizeof v);
        return 0;
    }
    case MATTN__OPT_U64: {
        char *end;
        errno = 0;
        unsigned long long v = strtoull(text, &end, 10);
        if (text[0] < '0' || text[0] > '9' || *end != '\0' || errno == ERANGE)
            return usage(err, cmd, "--%s: '%s' is not an integer in [0, 2^64)", o->name, text);
        uint64_t u = (uint64_t)v;
        memcpy(field, &u, sizeof u);
        return 0;
    }
    case MATTN__OPT_FLOAT: {
        char *end;
        if (isspace((unsigned char)text[0]))
            return usage(err, cmd, "--%s: '%s' is not a number", o->name, text);
        double v = strtod(text, &end);
        if (*end != '\0' || end == text)
            return usage(err, cmd, "--%s: '%s' is not a number", o->name, text);
        if (!isfinite(v))
            return usage(err, cmd, "--%s: '%s' is not a finite number", o->name, text);
        int below = (o->flags & MATTN__OPT_BELOW_MAX) != 0;
        if (v < o->fmin || v > o->fmax || (below && v == o->fmax))
            return usage(err, cmd, "--%s: %g is outside [%g, %g%c", o->name, v, o->fmin,
                         o->fmax, below ? ')' : ']');
        if ((o->flags & MATTN__OPT_NONZERO) && v == 0.0)
            return usage(err, cmd, "--%s: must not be 0", o->name);
        memcpy(field, &v, sizeof v);
        return 0;
    }
    case MATTN__OPT_PAIR: {
        const char *comma = strchr(text, ',');
        int64_t v[2];
        char first[32];
        size_t len = comma ? (size_t)(comma - text) : 0;
        if (comma == NULL || len >= sizeof first)
            return usage(err, cmd, "--%s: expected two integers '%s', got '%s'", o->name,
                         o->metavar, text);
        memcpy(first, text, len);
        first[len] = '\0';
        if (parse_i64(first, &v[0]) || parse_i64(comma + 1, &v[1]))
            return usage(err, cmd, "--%s: expected two integers '%s', got '%s'", o->name,
                         o->metavar, text);
        for (int x = 0; x < 2; x++)
            if (v[x] < o->imin || v[x] > o->imax)
                return usage(err, cmd,
                             "--%s: %" PRId64 " is outside [%" PRId64 ", %" PRId64 "]",
                             o->name, v[x], o->imin, o->imax);
        memcpy(field, v, sizeof v);
        return 0;
    }
    case MATTN__OPT_STRING:
        memcpy(field, &text, sizeof text);
        return 0;
    case MATTN__OPT_CHOICE: {
        size_t len = strlen(text);
        int index = 0;
        for (const char *c = o->choices; *c; index++) {
            const char *bar = strchr(c, '|');
            size_t wl = bar ? (size_t)(bar - c) : strlen(c);
            if (wl == len && strncmp(c, text, len) == 0) {
                memcpy(field, &index, sizeof index);
                return 0;
            }
            c += wl + (bar ? 1 : 0);
        }
        return usage(err, cmd, "--%s: '%s' is not one of %s", o->name, text, o->choices);
    }
    case MATTN__OPT_FLAG:
    case MATTN__OPT_SECTION:
        break;
    }
    return usage(err, cmd, "--%s: internal error (bad option kind)", o->name);
}

int mattn__opts_parse(const char *cmd, const mattn__opt *opts, size_t n, int argc,
                      char **argv, int first, void *dst, unsigned char *given, FILE *err)
{
    memset(given, 0, n);
    /* --help wins over everything else on the line, valid or not. */
    for (int i = first; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return MATTN__CLI_HELP;

    for (int i = first; i < argc; i++) {
        const char *arg = argv[i];
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0')
            return usage(err, cmd, "unexpected argument '%s' (options start with --)", arg);
        const char *name = arg + 2, *eq = strchr(name, '=');
        size_t len = eq ? (size_t)(eq - name) : strlen(name);
        int idx = -1;
        for (size_t k = 0; k < n && idx < 0; k++)
            if (opts[k].kind != MATTN__OPT_SECTION && strlen(opts[k].name) == len &&
                strncmp(opts[k].name, name, len) == 0)
                idx = (int)k;
        if (idx < 0) {
            const char *hint = suggest(opts, n, name, len);
            return hint ? usage(err, cmd, "unknown option --%.*s (did you mean --%s?)",
                                (int)len, name, hint)
                        : usage(err, cmd, "unknown option --%.*s", (int)len, name);
        }
        const mattn__opt *o = &opts[idx];
        if (given[idx])
            return usage(err, cmd, "--%s is given more than once", o->name);
        given[idx] = 1;
        if (o->kind == MATTN__OPT_FLAG) {
            if (eq)
                return usage(err, cmd, "--%s takes no value", o->name);
            int one = 1;
            memcpy((char *)dst + o->offset, &one, sizeof one);
            continue;
        }
        const char *value = eq ? eq + 1 : (i + 1 < argc ? argv[++i] : NULL);
        const char *meta = o->kind == MATTN__OPT_CHOICE ? o->choices : o->metavar;
        if (value == NULL || value[0] == '\0')
            return usage(err, cmd, "--%s needs a value (%s)", o->name, meta);
        /* "--q --k k.npy" forgot q's file; negative numbers have one dash. */
        if (!eq && strncmp(value, "--", 2) == 0)
            return usage(err, cmd, "--%s needs a value (%s) but is followed by %s", o->name,
                         meta, value);
        int rc = parse_value(cmd, o, value, dst, err);
        if (rc)
            return rc;
    }
    return MATTN__CLI_EXIT_OK;
}

void mattn__opts_wrap(FILE *out, const char *text, int column, int width)
{
    int col = column;
    const char *p = text;
    while (*p) {
        while (*p == ' ')
            p++;
        size_t word = strcspn(p, " ");
        if (word == 0)
            break;
        if (col > column && col + 1 + (int)word > width) {
            fprintf(out, "\n%*s", column, "");
            col = column;
        } else if (col > column) {
            fputc(' ', out);
            col++;
        }
        fwrite(p, 1, word, out);
        col += (int)word;
        p += word;
    }
    fputc('\n', out);
}

void mattn__opts_help(FILE *out, const mattn__opt *opts, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        const mattn__opt *o = &opts[i];
        if (o->kind == MATTN__OPT_SECTION) {
            fprintf(out, "\n%s:\n", o->name);
            continue;
        }
        char left[96];
        const char *meta = o->kind == MATTN__OPT_CHOICE ? o->choices
                           : o->kind == MATTN__OPT_FLAG  ? ""
                                                         : o->metavar;
        int len = snprintf(left, sizeof left, "  --%s%s%s", o->name, meta[0] ? " " : "", meta);
        if (len >= HELP_COLUMN - 1)
            fprintf(out, "%s\n%*s", left, HELP_COLUMN, "");
        else
            fprintf(out, "%-*s", HELP_COLUMN, left);
        mattn__opts_wrap(out, o->help, HELP_COLUMN, HELP_WIDTH);
    }
}
