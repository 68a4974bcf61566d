/* Command-line options: one table per command drives both the parser and the
 * help text, so an option cannot exist without being documented.
 *
 * Accepted forms: "--name value" and "--name=value"; flags take no value.
 * Values are checked as they are parsed (integers with ranges, finite floats
 * with ranges, "a,b" integer pairs, one of a fixed set of words). A repeated
 * option, an unknown option (with a "did you mean" hint), a missing or
 * malformed value, or a positional argument is a usage error. */
#ifndef MATTN_CLI_ARGS_H
#define MATTN_CLI_ARGS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum mattn__opt_kind {
    MATTN__OPT_SECTION, /* not an option: a heading in the help text */
    MATTN__OPT_FLAG,    /* int, set to 1 */
    MATTN__OPT_INT,     /* int64_t in [imin, imax] */
    MATTN__OPT_U64,     /* uint64_t, any value */
    MATTN__OPT_FLOAT,   /* double, finite, in [fmin, fmax] (see flags) */
    MATTN__OPT_PAIR,    /* int64_t[2] written "a,b", each in [imin, imax] */
    MATTN__OPT_STRING,  /* const char * pointing into argv */
    MATTN__OPT_CHOICE   /* int: index of the word in `choices` ("a|b|c") */
} mattn__opt_kind;

/* FLOAT flags. */
#define MATTN__OPT_BELOW_MAX 1u /* value < fmax rather than <= */
#define MATTN__OPT_NONZERO 2u   /* value != 0 */

typedef struct mattn__opt {
    mattn__opt_kind kind;
    const char *name;    /* without the leading "--"; the heading for SECTION */
    size_t offset;       /* where the value goes in the destination struct */
    const char *metavar; /* "N", "FILE", "L,R"; CHOICE shows `choices` */
    const char *help;    /* one line: meaning, SPEC semantics, default */
    int64_t imin, imax;  /* INT, PAIR */
    double fmin, fmax;   /* FLOAT */
    unsigned flags;      /* FLOAT */
    const char *choices; /* CHOICE */
} mattn__opt;

/* Return values of mattn__opts_parse (the CLI's exit codes where they are). */
#define MATTN__CLI_EXIT_OK 0
#define MATTN__CLI_EXIT_RUNTIME 1
#define MATTN__CLI_EXIT_USAGE 2
#define MATTN__CLI_HELP (-1) /* --help or -h was given */

/* Parses argv[first..argc) into dst with the table. given[i] is set to 1 for
 * each table entry i that appears (given has n entries). Errors are printed
 * to err (if not NULL) as "mattn <cmd>: ..." and give MATTN__CLI_EXIT_USAGE. */
int mattn__opts_parse(const char *cmd, const mattn__opt *opts, size_t n, int argc,
                      char **argv, int first, void *dst, unsigned char *given, FILE *err);

/* Prints the options of the table, one per line, under their headings. */
void mattn__opts_help(FILE *out, const mattn__opt *opts, size_t n);

/* Prints text word-wrapped to `width` columns, continuation lines indented
 * to `column` (the first line continues wherever the caller left off, which
 * is assumed to be `column`), and a final newline. */
void mattn__opts_wrap(FILE *out, const char *text, int column, int width);

/* Index of the table entry named `name`, or -1. */
int mattn__opts_find(const mattn__opt *opts, size_t n, const char *name);

#endif
