/* SPDX-License-Identifier: MIT */
/*
 * main.c - the luamp binary: luamp [options] [script [args...]].
 *
 * It is shaped like lua.c so that a Lua user meets no surprise: main() runs
 * everything inside one protected call (pmain); the command line is first
 * collected and checked, then acted on, so a usage error runs nothing; every
 * message leaves through l_message as "luamp: ...".  The real work (states,
 * tracebacks, reaping children at the end) is the host API of luamp.h, in
 * host.c; this file only drives it from the command line.
 *
 * The interactive mode (-i, or no script with a terminal on standard
 * input) is lua's REPL too, banner and prompts included even when the
 * input is piped, with one addition: the global `mp` is the luamp module,
 * ready at the first prompt.  Ctrl-C at the prompt drops the line being
 * typed; Ctrl-C while a line runs interrupts it (the REPL section below).
 * At a terminal, lines are edited and statements recalled with libedit,
 * when the binary was built with it: libedit is BSD-licensed, as luamp is
 * MIT, where GNU readline (which Debian's lua5.4 uses) is GPL-3 and would
 * put the whole binary under the GPL; configure takes it only when asked
 * (--with-readline=gnu).  Without either, lines are read with fgets.
 *
 * Exit status: 0 when all went well, 1 when a chunk raised an error (its
 * message and traceback are on stderr), 2 on bad usage.  A script calling
 * os.exit chooses its own.  The interactive mode ends with 0 at the end
 * of its input (errors of the lines typed are only reported), 1 after a
 * SIGTERM at the prompt or a failure to read standard input.
 */
#include "luamp.h"
#ifdef LUAMP_MPI
#include "cluster.h"
#endif

#include <errno.h>
#include <limits.h>
#include <malloc.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include <lauxlib.h>

#if defined(LUAMP_LIBEDIT)
#include <editline/readline.h>
#define LINE_EDITING 1
#elif defined(LUAMP_GNU_READLINE)
#include <readline/readline.h>
#include <readline/history.h>
#define LINE_EDITING 1
#endif

#define PROGNAME "luamp"
#define EXIT_USAGE 2

/* LUA_INIT_5_4 takes precedence over LUA_INIT, as in lua. */
#define INIT_VAR_VERSION "LUA_INIT_" LUA_VERSION_MAJOR "_" LUA_VERSION_MINOR
#define INIT_VAR "LUA_INIT"

static const char usage_text[] =
    "usage: " PROGNAME " [options] [script [args...]]\n"
    "Available options are:\n"
    "  -e code     run code\n"
    "  -l mod      require mod into global mod\n"
    "  -l g=mod    require mod into global g\n"
    "  -j N        default pool size (a positive integer)\n"
    "  -i          interactive mode after the script\n"
    "  -v          show version information\n"
    "  -E          ignore environment variables (LUA_INIT, LUA_PATH, LUA_CPATH)\n"
    "  -W          turn warnings on\n"
    "  -h          show this help\n"
    "  --          stop handling options\n"
    "  -           stop handling options and run standard input\n"
    "Before the options act, " INIT_VAR_VERSION " (or else " INIT_VAR ") runs\n"
    "(Lua code, or @file to run a file) unless -E is given.\n";

/* The command line as collect_options understood it. */
struct options {
    int script;        /* argv index of the script; argc when there is none */
    int has_e;         /* some -e: without a script, stdin is not run */
    int interactive;   /* -i */
    int version;       /* -v, or -i: the banner */
    int no_env;        /* -E */
    int help;          /* -h */
    int processes;     /* -j N; 0 when not given */
};

static void l_message(const char *msg)
{
    fprintf(stderr, "%s: %s\n", PROGNAME, msg);
}

/* Prints the error on top of the stack, if status says there is one, and
 * pops it.  Returns whether all went well. */
static int report(lua_State *L, int status)
{
    if (status != LUA_OK) {
        const char *msg = lua_tostring(L, -1);

        l_message(msg != NULL ? msg : "(error object is not a string)");
        lua_pop(L, 1);
    }
    return status == LUA_OK;
}

static void print_version(void)
{
    printf("%s %s (%s)\n", PROGNAME, LUAMP_VERSION, LUA_RELEASE);
    fflush(stdout);
}

/* N of -j N: digits only, and a positive int; 0 when it is not one. */
static int parse_processes(const char *s)
{
    char *end;
    long n;

    if (*s < '0' || *s > '9')
        return 0;
    errno = 0;
    n = strtol(s, &end, 10);
    if (errno != 0 || *end != '\0' || n <= 0 || n > INT_MAX)
        return 0;
    return (int)n;
}

/* The argument of the option at argv[*i]: attached (-jN) or the next
 * word, which is then consumed.  NULL when there is none. */
static const char *option_argument(int argc, char **argv, int *i)
{
    if (argv[*i][2] != '\0')
        return argv[*i] + 2;
    if (*i + 1 >= argc)
        return NULL;
    return argv[++*i];
}

/* Fills o from argv.  On bad usage pushes what is wrong and returns 0. */
static int collect_options(lua_State *L, int argc, char **argv, struct options *o)
{
    int i;

    memset(o, 0, sizeof *o);
    for (i = 1; i < argc && argv[i][0] == '-'; i++) {
        const char *opt = argv[i], *value;

        if (strcmp(opt, "--") == 0) {
            i++;
            break;
        }
        if (opt[1] == '\0')             /* "-": the script is stdin */
            break;
        switch (opt[1]) {
        case 'e': case 'l': case 'j':
            value = option_argument(argc, argv, &i);
            if (value == NULL) {
                lua_pushfstring(L, "'-%c' needs argument", opt[1]);
                return 0;
            }
            if (opt[1] == 'e')
                o->has_e = 1;
            if (opt[1] == 'j' && (o->processes = parse_processes(value)) == 0) {
                lua_pushfstring(L, "'-j' needs a positive integer, got '%s'", value);
                return 0;
            }
            continue;
        case 'i': case 'v': case 'h': case 'E': case 'W':
            if (opt[2] == '\0') {
                o->interactive |= opt[1] == 'i';
                o->version |= opt[1] == 'v' || opt[1] == 'i';   /* as in lua */
                o->help |= opt[1] == 'h';
                o->no_env |= opt[1] == 'E';
                continue;       /* (-W acts in its turn, in run_options) */
            }
            break;
        }
        lua_pushfstring(L, "unrecognized option '%s'", opt);
        return 0;
    }
    o->script = i;
    return 1;
}

/* The global `arg`, as lua makes it: the script at index 0, its arguments
 * after it, the interpreter and options at negative indices.  Without a
 * script, the interpreter's name is at 0 and the options after it. */
static void create_arg_table(lua_State *L, int argc, char **argv, int script)
{
    int i;

    if (script >= argc)
        script = 0;
    lua_newtable(L);
    for (i = 0; i < argc; i++) {
        lua_pushstring(L, argv[i]);
        lua_rawseti(L, -2, i - script);
    }
    lua_setglobal(L, "arg");
}

/* -E: package.path and package.cpath as Lua makes them when LUA_PATH,
 * LUA_CPATH and their _5_4 forms are unset, and the registry's LUA_NOENV
 * set, which tells libraries opened later to ignore the environment too.
 * (lua sets LUA_NOENV before opening the libraries; the host API opens
 * them in luamp_newstate, so the package library's paths are reset.) */
static void ignore_environment(lua_State *L)
{
    lua_pushboolean(L, 1);
    lua_setfield(L, LUA_REGISTRYINDEX, "LUA_NOENV");
    if (lua_getglobal(L, "package") == LUA_TTABLE) {
        lua_pushliteral(L, LUA_PATH_DEFAULT);
        lua_setfield(L, -2, "path");
        lua_pushliteral(L, LUA_CPATH_DEFAULT);
        lua_setfield(L, -2, "cpath");
    }
    lua_pop(L, 1);
}

/* Runs LUA_INIT_5_4 or LUA_INIT: Lua code, or @file. */
static int run_init(lua_State *L)
{
    const char *name = "=" INIT_VAR_VERSION;
    const char *init = getenv(name + 1);

    if (init == NULL) {
        name = "=" INIT_VAR;
        init = getenv(name + 1);
    }
    if (init == NULL)
        return 1;
    if (init[0] == '@')
        return report(L, luamp_dofile(L, init + 1, 0, NULL));
    return report(L, luamp_dostring(L, init, name));
}

/* Adds s to b as a Lua string literal.  Every byte that could end or bend
 * the literal is written as a decimal escape, so any name stays a name. */
static void add_quoted(luaL_Buffer *b, const char *s)
{
    char escape[8];

    luaL_addchar(b, '"');
    for (; *s != '\0'; s++) {
        unsigned char c = (unsigned char)*s;

        if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
            || c == '_' || c == '.' || c == '-') {
            luaL_addchar(b, (char)c);
        } else {
            snprintf(escape, sizeof escape, "\\%03u", (unsigned)c);
            luaL_addstring(b, escape);
        }
    }
    luaL_addchar(b, '"');
}

/* -l g=mod: g = require "mod".  The require runs as a chunk, so that its
 * errors get the same traceback as any other. */
static int run_library(lua_State *L, const char *spec)
{
    const char *eq = strchr(spec, '=');
    int base = lua_gettop(L), status, ok;
    luaL_Buffer b;

    if (eq != NULL)
        lua_pushlstring(L, spec, (size_t)(eq - spec));
    else
        lua_pushstring(L, spec);
    luaL_buffinit(L, &b);
    luaL_addstring(&b, "return require(");
    add_quoted(&b, eq != NULL ? eq + 1 : spec);
    luaL_addchar(&b, ')');
    luaL_pushresult(&b);
    status = luamp_dostring(L, lua_tostring(L, base + 2), "=(command line)");
    if (status == LUA_OK) {
        lua_settop(L, base + 3);            /* require's first result */
        lua_setglobal(L, lua_tostring(L, base + 1));
    }
    ok = report(L, status);
    lua_settop(L, base);
    return ok;
}

/* Runs the -e, -l and -W options, in their order on the command line. */
static int run_options(lua_State *L, int argc, char **argv, int script)
{
    int i;

    for (i = 1; i < script; i++) {
        char option = argv[i][1];
        const char *value;
        int base = lua_gettop(L), ok = 1;

        if (option == 'W') {
            lua_warning(L, "@on", 0);
            continue;
        }
        if (option != 'e' && option != 'l' && option != 'j')
            continue;
        value = option_argument(argc, argv, &i);
        if (option == 'e')
            ok = report(L, luamp_dostring(L, value, "=(command line)"));
        else if (option == 'l')
            ok = run_library(L, value);
        lua_settop(L, base);            /* what the chunk returned */
        if (!ok)
            return 0;
    }
    return 1;
}

/* Runs argv[script] with the words after it as arguments.  "-" is
 * standard input, unless "--" came just before (then it is a file). */
static int run_script(lua_State *L, int argc, char **argv, int script)
{
    const char *path = argv[script];
    int base = lua_gettop(L), ok;

    if (strcmp(path, "-") == 0 && strcmp(argv[script - 1], "--") != 0)
        path = NULL;
    ok = report(L, luamp_dofile(L, path, argc - script, argv + script));
    lua_settop(L, base);
    return ok;
}

/* ---- the REPL ----------------------------------------------------------
 *
 * Shaped like lua's: a line is first tried as an expression ("return
 * <line>", its values printed), then as a statement, read on over more
 * lines while it is incomplete.  Prompts ("> ", ">> ", or _PROMPT and
 * _PROMPT2) are printed whether or not standard input is a terminal.
 *
 * Signals.  luamp_catch_interrupts makes SIGINT and SIGTERM an error
 * raised in the running Lua code, which the REPL reports as any other.
 * At the prompt no Lua code runs: the REPL takes the interrupt back
 * (luamp_clear_interrupt) and, for a Ctrl-C (SIGINT), drops the
 * statement being typed and prompts again; a SIGTERM ends the session,
 * as it ends a script.  Both signals are blocked while the REPL reads,
 * and let in only while it waits for the terminal, in ppoll(): one that
 * comes a moment before the wait still ends it, instead of lying pending
 * until it stops the next line.  (From a pipe or a file, where stdio's
 * buffer may hold the next line already, the REPL does not wait: a
 * signal ends a read that blocks, with EINTR.)  A SIGINT that came after
 * a statement ended, before the next prompt, was meant for that
 * statement, and is dropped.
 */

/* What reading a line gave: a line (pushed), the end of input, a Ctrl-C
 * before the line ended, or a SIGTERM (nothing pushed for these). */
enum { LINE_READ, LINE_END, LINE_INTERRUPTED, LINE_TERMINATED };

/* What a signal taken back at the prompt does: Ctrl-C drops the line. */
static int line_signal(int sig)
{
    if (sig == SIGTERM)
        return LINE_TERMINATED;
    fputs("\n", stdout);            /* after the ^C the terminal showed */
    return LINE_INTERRUPTED;
}

/* Reports a failure to read standard input: the end of the input. */
static int read_error(lua_State *L, const char *what, int err)
{
    l_message(lua_pushfstring(L, "cannot read standard input: %s%s", what, strerror(err)));
    lua_pop(L, 1);
    return LINE_END;
}

/* Waits until the terminal has input (returns 0) or SIGINT or SIGTERM
 * arrives (returns it, taken back); -1 on an error, with errno set.  The
 * signals are blocked around the wait; ppoll lets them in during it.  A
 * signal may come with the input (a line typed after a Ctrl-C, before
 * luamp ran again: the terminal dropped what was typed before it), and
 * ppoll then reports the input and leaves the signal pending: it is let
 * in, and handled first. */
static int wait_for_input(lua_State *L, const sigset_t *waiting_mask)
{
    struct pollfd in = {STDIN_FILENO, POLLIN, 0};
    sigset_t came, blocked;
    int sig;

    for (;;) {
        if ((sig = luamp_clear_interrupt(L)) != 0)
            return sig;
        if (ppoll(&in, 1, NULL, waiting_mask) < 0) {
            if (errno != EINTR)
                return -1;
            continue;
        }
        if (sigpending(&came) != 0)
            return -1;
        if (!sigismember(&came, SIGINT) && !sigismember(&came, SIGTERM))
            break;
        if (sigprocmask(SIG_SETMASK, waiting_mask, &blocked) != 0
            || sigprocmask(SIG_SETMASK, &blocked, NULL) != 0)
            return -1;
    }
    if (!(in.revents & POLLIN)) {   /* the terminal hung up */
        errno = EIO;
        return -1;
    }
    return 0;
}

/* Pushes the prompt: _PROMPT (for a statement's next lines, _PROMPT2)
 * through tostring when set, as lua does, else "> " (">> "). */
static const char *push_prompt(lua_State *L, int first)
{
    if (lua_getglobal(L, first ? "_PROMPT" : "_PROMPT2") == LUA_TNIL) {
        lua_pop(L, 1);
        return lua_pushstring(L, first ? "> " : ">> ");
    }
    luaL_tolstring(L, -1, NULL);
    lua_remove(L, -2);
    return lua_tostring(L, -1);
}

/* Prints the prompt and pushes the next line of standard input without
 * its newline, read with fgets in pieces so that no line is too long. */
static int read_plain(lua_State *L, const char *prompt, const sigset_t *waiting_mask)
{
    char piece[512];
    luaL_Buffer b;
    int got = 0, err = 0, sig = 0;

    fputs(prompt, stdout);
    fflush(stdout);
    if (isatty(STDIN_FILENO)) {
        /* (a terminal gives a line per read: stdio's buffer is empty) */
        if ((sig = wait_for_input(L, waiting_mask)) != 0)
            return sig > 0 ? line_signal(sig) : read_error(L, "", errno);
    }
    if (sigprocmask(SIG_SETMASK, waiting_mask, NULL) != 0)
        return read_error(L, "sigprocmask: ", errno);
    if ((sig = luamp_clear_interrupt(L)) != 0)     /* came a moment ago */
        return line_signal(sig);
    luaL_buffinit(L, &b);
    for (;;) {
        size_t len;

        if (fgets(piece, sizeof piece, stdin) == NULL) {
            if (ferror(stdin) && errno == EINTR) {
                clearerr(stdin);
                if ((sig = luamp_clear_interrupt(L)) == 0)
                    continue;           /* another signal */
            } else if (ferror(stdin)) {
                err = errno;
            }
            break;
        }
        got = 1;
        len = strlen(piece);
        if (len > 0 && piece[len - 1] == '\n') {
            luaL_addlstring(&b, piece, len - 1);
            break;
        }
        luaL_addlstring(&b, piece, len);
    }
    luaL_pushresult(&b);
    if (got && sig == 0 && err == 0)
        return LINE_READ;
    lua_pop(L, 1);
    if (sig != 0)
        return line_signal(sig);
    return err != 0 ? read_error(L, "", err) : LINE_END;
}

#ifdef LINE_EDITING
/*
 * Line editing, when standard input and output are both a terminal.  The
 * library's callback interface rather than readline(): the REPL waits for
 * each key itself, in wait_for_input, so that signals reach it however the
 * library would treat them; the library is told to leave them alone
 * (rl_catch_signals), and on Ctrl-C the line is dropped and the terminal
 * given back as it was.
 */
static int editing;             /* lines come from the editor */
static int echo_ctl;            /* the terminal shows Ctrl-C as ^C */
static char *edited;            /* the editor's last line, NULL at the end */
static int edited_done;         /* a line (or the end) came */

static void on_edited(char *line)
{
    edited = line;
    edited_done = 1;
    rl_callback_handler_remove();
}

static void start_editing(void)
{
    struct termios t;

    if (!isatty(STDIN_FILENO) || !isatty(STDOUT_FILENO))
        return;
    /* The editor turns echo off while it reads: ^C is echoed here. */
    echo_ctl = tcgetattr(STDIN_FILENO, &t) == 0 && (t.c_lflag & ECHOCTL);
    rl_readline_name = PROGNAME;        /* for "$if luamp" in ~/.inputrc */
    rl_catch_signals = 0;
    editing = 1;
}

/* Forgets the line being edited and gives the terminal back. */
static void drop_edited(int sig)
{
    if (sig == SIGINT && echo_ctl)
        fputs("^C", stdout);
    rl_free_line_state();
#ifdef HAVE_RL_CALLBACK_SIGCLEANUP
    rl_callback_sigcleanup();
#endif
    rl_cleanup_after_signal();
    rl_callback_handler_remove();
}

/* read_plain's work, through the editor. */
static int read_edited(lua_State *L, const char *prompt, const sigset_t *waiting_mask)
{
    int sig;

    free(edited);
    edited = NULL;
    edited_done = 0;
    rl_callback_handler_install(prompt, on_edited);
    while (!edited_done) {
        if ((sig = wait_for_input(L, waiting_mask)) > 0) {
            drop_edited(sig);
            return line_signal(sig);
        }
        if (sig < 0) {
            int err = errno;

            rl_callback_handler_remove();
            return read_error(L, "", err);
        }
        rl_callback_read_char();
    }
    if (edited == NULL)
        return LINE_END;
    lua_pushstring(L, edited);
    return LINE_READ;
}

/* Keeps a statement (index idx) for recalling with the arrow keys. */
static void remember(lua_State *L, int idx)
{
    const char *text = lua_tostring(L, idx);

    if (editing && text[0] != '\0')
        add_history(text);
}
#else
static void start_editing(void)
{
}

static void remember(lua_State *L, int idx)
{
    (void)L;
    (void)idx;
}
#endif

/* Prompts and reads a line: the first of a statement, or the next.  The
 * signal mask is as it was when it returns. */
static int read_line(lua_State *L, int first)
{
    sigset_t interrupts, waiting_mask;
    const char *prompt;
    int got, sig;

    if (sigemptyset(&interrupts) != 0 || sigaddset(&interrupts, SIGINT) != 0
        || sigaddset(&interrupts, SIGTERM) != 0
        || sigprocmask(SIG_BLOCK, &interrupts, &waiting_mask) != 0)
        return read_error(L, "sigprocmask: ", errno);
    sig = luamp_clear_interrupt(L);
    if (sig == SIGTERM || (sig == SIGINT && !first)) {
        got = line_signal(sig);
    } else {                            /* (a SIGINT for the last statement) */
        prompt = push_prompt(L, first);
#ifdef LINE_EDITING
        if (editing)
            got = read_edited(L, prompt, &waiting_mask);
        else
#endif
            got = read_plain(L, prompt, &waiting_mask);
        lua_remove(L, got == LINE_READ ? -2 : -1);
    }
    if (sigprocmask(SIG_SETMASK, &waiting_mask, NULL) != 0) {
        if (got == LINE_READ)
            lua_pop(L, 1);
        got = read_error(L, "sigprocmask: ", errno);
    }
    return got;
}

/* Whether the error on top of the stack says the chunk ended too soon:
 * then the statement goes on on the next line. */
static int incomplete(lua_State *L)
{
    size_t len;
    const char *msg = lua_tolstring(L, -1, &len);
    static const char eof_mark[] = "<eof>";

    return msg != NULL && len >= sizeof eof_mark - 1
        && strcmp(msg + len - (sizeof eof_mark - 1), eof_mark) == 0;
}

/* Runs the statement on top of the stack, reading lines while it is
 * incomplete.  Returns luamp_dostring's status, with the results or the
 * error above the (possibly longer) statement, or -1 when a signal
 * dropped the statement (it is alone then).  *got is what reading the
 * statement's last line gave. */
static int run_statement(lua_State *L, int *got)
{
    int status;

    while ((status = luamp_dostring(L, lua_tostring(L, -1), "=stdin")) == LUA_ERRSYNTAX
           && incomplete(L)) {
        lua_pop(L, 1);                  /* the "<eof>" error */
        *got = read_line(L, 0);
        if (*got == LINE_END)           /* the error again, to report */
            return luamp_dostring(L, lua_tostring(L, -1), "=stdin");
        if (*got != LINE_READ)
            return -1;
        lua_pushliteral(L, "\n");
        lua_insert(L, -2);
        lua_concat(L, 3);
    }
    return status;
}

/* Prints the values from index first to the top with the global print,
 * as lua's REPL does. */
static void print_results(lua_State *L, int first)
{
    int n = lua_gettop(L) - first + 1;

    if (n <= 0)
        return;
    luaL_checkstack(L, LUA_MINSTACK, "too many results to print");
    lua_getglobal(L, "print");
    lua_insert(L, first);
    if (lua_pcall(L, n, 0, 0) != LUA_OK)
        l_message(lua_pushfstring(L, "error calling 'print' (%s)", luaL_tolstring(L, -1, NULL)));
}

/* Reads and runs one statement: an expression is printed (it is first
 * tried as "return <line>"), anything else is run as a statement.  A
 * first line "=expr" is "return expr", as in lua.  Returns what reading
 * its last line gave: the REPL goes on while that is not the end. */
static int do_statement(lua_State *L)
{
    int line = lua_gettop(L) + 1, got, first, status;
    const char *text;

    if ((got = read_line(L, 1)) != LINE_READ)
        return got;
    text = lua_tostring(L, line);
    if (text[0] == '=') {
        lua_pushfstring(L, "return %s", text + 1);
        lua_replace(L, line);
    }
    lua_pushfstring(L, "return %s", lua_tostring(L, line));
    status = luamp_dostring(L, lua_tostring(L, -1), "=stdin");
    first = line + 2;
    if (status == LUA_ERRSYNTAX) {
        lua_settop(L, line);
        status = run_statement(L, &got);
        first = line + 1;
    }
    if (status != -1) {
        remember(L, line);
        if (report(L, status))
            print_results(L, first);
    }
    lua_settop(L, line - 1);
    return got;
}

/* The REPL's `mp`, as if `mp = require "luamp"` had run first (unless
 * something, such as the script before it, set a global mp already). */
static void set_mp(lua_State *L)
{
    int base = lua_gettop(L);

    report(L, luamp_dostring(L, "if mp == nil then mp = require \"luamp\" end", "=(interactive)"));
    lua_settop(L, base);
}

/* The read-eval-print loop, until the end of input or a SIGTERM.
 * Returns whether it ended well: standard input read to its end. */
static int repl(lua_State *L)
{
    int got;

    start_editing();
    set_mp(L);
    while ((got = do_statement(L)) == LINE_READ || got == LINE_INTERRUPTED)
        ;
    fputs("\n", stdout);
    fflush(stdout);
    if (got == LINE_TERMINATED) {
        l_message("interrupted by SIGTERM");
        return 0;
    }
    return !ferror(stdin);
}

/* Everything the command line asks for, in lua's order: options checked,
 * LUA_INIT (unless -E), -e, -l and -W in order, the script, then the REPL.  Returns the
 * exit status as an integer. */
static int pmain(lua_State *L)
{
    int argc = (int)lua_tointeger(L, 1);
    char **argv = lua_touserdata(L, 2);
    struct options o;

    if (!collect_options(L, argc, argv, &o)) {
        l_message(lua_tostring(L, -1));
        fputs(usage_text, stderr);
        lua_pushinteger(L, EXIT_USAGE);
        return 1;
    }
    if (o.help) {
        fputs(usage_text, stdout);
        lua_pushinteger(L, EXIT_SUCCESS);
        return 1;
    }
    if (o.version)
        print_version();
#ifdef LUAMP_MPI
    /* (luamp-mpi's rank 0: -j N is the workers of each rank) */
    if (luamp_cluster_install(L, o.processes) != 0) {
        lua_pushinteger(L, EXIT_FAILURE);
        return 1;
    }
    if (o.processes > 0 && !luamp_cluster_active())
#else
    if (o.processes > 0)
#endif
        luamp_set_default_processes(L, o.processes);
    if (o.no_env)
        ignore_environment(L);
    create_arg_table(L, argc, argv, o.script);
    if ((!o.no_env && !run_init(L)) || !run_options(L, argc, argv, o.script)
        || (o.script < argc && !run_script(L, argc, argv, o.script))) {
        lua_pushinteger(L, EXIT_FAILURE);
        return 1;
    }
    if (o.interactive) {
        lua_pushinteger(L, repl(L) ? EXIT_SUCCESS : EXIT_FAILURE);
    } else if (o.script < argc || o.has_e || o.version) {
        lua_pushinteger(L, EXIT_SUCCESS);
    } else if (isatty(STDIN_FILENO)) {
        print_version();
        lua_pushinteger(L, repl(L) ? EXIT_SUCCESS : EXIT_FAILURE);
    } else {
        lua_pushinteger(L, report(L, luamp_dofile(L, NULL, 0, NULL)) ? EXIT_SUCCESS : EXIT_FAILURE);
    }
    return 1;
}

static void on_sigpipe(int sig)
{
    (void)sig;
}

/* Writing to a pipe whose reader is gone must fail with EPIPE, which Lua
 * reports (io.write returns nil, "Broken pipe"), instead of killing luamp.
 * A handler that does nothing gets that as SIG_IGN would, but an ignored
 * signal stays ignored across exec, and the commands a script starts with
 * os.execute or io.popen expect the default: with a handler, they get it. */
static int catch_sigpipe(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigpipe;
    sa.sa_flags = SA_RESTART;
    if (sigemptyset(&sa.sa_mask) != 0 || sigaction(SIGPIPE, &sa, NULL) != 0) {
        fprintf(stderr, "%s: cannot handle SIGPIPE: %s\n", PROGNAME, strerror(errno));
        return 0;
    }
    return 1;
}

/* Output still buffered at the end is luamp's to deliver; a failure here
 * (a full disk, a reader gone) must not pass in silence. */
static int flush_stdout(int status)
{
    if (fflush(stdout) != 0) {
        fprintf(stderr, "%s: cannot write to standard output: %s\n", PROGNAME, strerror(errno));
        return EXIT_FAILURE;
    }
    return status;
}

/*
 * glibc gives the top of its heap back to the kernel as soon as 128 KiB
 * of it is free, and a Lua program frees in bursts, whenever a collection
 * cycle ends: a process receiving 64 KiB messages faulted in 8,000 pages
 * for 2,000 messages, and ran at half the speed it does without (2,600
 * against 5,500 MiB/s).  The binary starts glibc where its own rules end
 * up once big blocks have been freed: blocks up to 32 MiB from the heap,
 * and 64 MiB of free heap kept.  (Setting either stops glibc from moving
 * them, hence both.)  A user who tunes malloc in the environment keeps
 * their settings.  Applications that embed luamp make this choice
 * themselves.
 */
static void tune_malloc(void)
{
    const char *t = getenv("GLIBC_TUNABLES");

    if ((t != NULL && strstr(t, "glibc.malloc.") != NULL) || getenv("MALLOC_TRIM_THRESHOLD_")
        || getenv("MALLOC_MMAP_THRESHOLD_") || getenv("MALLOC_TOP_PAD_"))
        return;
    /* (mallopt returns 0 for a value it refuses; glibc takes these) */
    mallopt(M_MMAP_THRESHOLD, 32 << 20);
    mallopt(M_TRIM_THRESHOLD, 64 << 20);
}

int main(int argc, char **argv)
{
    lua_State *L;
    int status;
#ifdef LUAMP_MPI
    int rank = luamp_cluster_start(&argc, &argv);

    if (rank == -2)
        return EXIT_FAILURE;
    if (rank > 0)
        return luamp_cluster_node(argc, argv);
#endif

    if (!catch_sigpipe())
        return EXIT_FAILURE;
    tune_malloc();
    L = luamp_newstate();
    if (L == NULL) {
        l_message("cannot create state: not enough memory");
        return EXIT_FAILURE;
    }
    luamp_catch_interrupts(L);
    lua_pushcfunction(L, pmain);
    lua_pushinteger(L, argc);
    lua_pushlightuserdata(L, argv);
    status = lua_pcall(L, 2, 1, 0);
    status = report(L, status) ? (int)lua_tointeger(L, -1) : EXIT_FAILURE;
    luamp_close(L);
#ifdef LUAMP_MPI
    if (rank == 0)
        status = luamp_cluster_stop(status);
#endif
    return flush_stdout(status);
}
