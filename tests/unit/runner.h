/*
 * The one main the unit tests share: tables of tests in suites, run with
 * CUnit's basic interface. Header-only, one copy per test program.
 */
#ifndef SB_TEST_RUNNER_H
#define SB_TEST_RUNNER_H

#include <stddef.h>
#include <stdio.h>

#include <CUnit/Basic.h>

struct sb_test {
    const char *name;
    void (*fn)(void);
};

struct sb_suite {
    const char *name;
    const struct sb_test *tests;
    size_t n_tests;
    CU_InitializeFunc init; /* NULL for none; a failing init fails the run */
    CU_CleanupFunc clean;
    CU_SetUpFunc setup; /* around every test */
    CU_TearDownFunc teardown;
};

/* The tests and count of a static table, in a struct sb_suite initializer:
 * {.name = "x", SB_TESTS(tests), .setup = ...}. */
#define SB_TESTS(table) .tests = (table), .n_tests = (sizeof(table) / sizeof((table)[0]))

/* Run the suites (n of them; a NULL name skips one): 0 when every test
 * passed, 1 on a failure, a failed suite init or a CUnit error (said on
 * stderr, prefixed with prog). */
static inline int sb_run(const char *prog, const struct sb_suite *suites, size_t n)
{
    unsigned failures = 1;
    if (CU_initialize_registry() != CUE_SUCCESS) {
        fprintf(stderr, "%s: CUnit error: %s\n", prog, CU_get_error_msg());
        return 1;
    }
    for (size_t s = 0; s < n; s++) {
        if (!suites[s].name)
            continue;
        CU_pSuite suite = CU_add_suite_with_setup_and_teardown(
            suites[s].name, suites[s].init, suites[s].clean, suites[s].setup, suites[s].teardown);
        for (size_t i = 0; suite && i < suites[s].n_tests; i++)
            if (!CU_add_test(suite, suites[s].tests[i].name, suites[s].tests[i].fn))
                suite = NULL;
        if (!suite)
            goto out;
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    if (CU_basic_run_tests() != CUE_SUCCESS)
        goto out;
    /* A suite whose init failed ran no assertions at all: count it. */
    failures = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
out:
    if (CU_get_error() != CUE_SUCCESS)
        fprintf(stderr, "%s: CUnit error: %s\n", prog, CU_get_error_msg());
    CU_cleanup_registry();
    return failures ? 1 : 0;
}

#endif
