/* SVG chart helper: structure of the output, escaping, log axes, broken lines, atomic save. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ea/report.h"
#include "testutil.h"

static int count(const char *hay, const char *needle) {
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)); p += strlen(needle)) n++;
    return n;
}

static void test_svg_render(void **state) {
    (void)state;
    ea_svg *s;
    int p0, p1;
    assert_int_equal(ea_svg_init(&s, "Spectra & <friends>", 2, 400, 300), EA_OK);
    assert_int_equal(ea_svg_panel(s, "C(k)", "k", "C", EA_SVG_LOG_X, &p0), EA_OK);
    assert_int_equal(ea_svg_panel(s, "Df", "layer", "Df", 0, &p1), EA_OK);
    double k[5] = {1, 2, 5, 50, 300}, c[5] = {0.2, 0.4, 0.6, 0.9, 1.0};
    char col[8];
    assert_int_equal(ea_svg_series(s, p0, "layer \"0\"", k, c, 5, ea_svg_ramp(0, 3, col), EA_SVG_SOLID, 0), EA_OK);
    /* A NaN and a non-positive x on the log axis: both skipped, the line breaks into 3 pieces. */
    double k2[6] = {1, 2, NAN, 10, 0, 100}, c2[6] = {0.1, 0.2, 0.3, 0.5, 0.6, 0.8};
    assert_int_equal(ea_svg_series(s, p0, "null", k2, c2, 6, "#999", EA_SVG_DASHED, 0), EA_OK);
    double l[3] = {0, 1, 2}, df[3] = {3.5, 12, 40};
    assert_int_equal(ea_svg_series(s, p1, NULL, l, df, 3, NULL, EA_SVG_SOLID, 1), EA_OK);
    assert_int_equal(ea_svg_series(s, 7, NULL, l, df, 3, NULL, EA_SVG_SOLID, 1), EA_ERR_ARG);
    char *out;
    size_t n;
    assert_int_equal(ea_svg_render(s, &out, &n), EA_OK);
    assert_int_equal(n, strlen(out));
    printf("svg: %zu bytes, %d paths, %d circles\n", n, count(out, "<path"), count(out, "<circle"));
    assert_non_null(strstr(out, "<svg xmlns=\"http://www.w3.org/2000/svg\""));
    assert_non_null(strstr(out, "Spectra &amp; &lt;friends&gt;"));
    assert_non_null(strstr(out, "layer &quot;0&quot;"));
    assert_null(strstr(out, "<friends>"));
    assert_int_equal(count(out, "<path"), 3);
    assert_int_equal(count(out, "<circle"), 3);
    assert_int_equal(count(out, "<g"), count(out, "</g>"));
    assert_int_equal(count(out, "<svg"), 1);
    assert_int_equal(count(out, "</svg>"), 1);
    /* Log axis 1..300 → decades 1, 10, 100, 1000 as tick labels. */
    assert_non_null(strstr(out, ">1000</text>"));
    assert_non_null(strstr(out, ">100</text>"));
    /* The dashed "null" series: 3 moves (pieces [1,2], [10], [100]). */
    const char *dashed = strstr(out, "stroke-dasharray=\"6,4\" d=\"");
    assert_non_null(dashed);
    const char *end = strchr(dashed + 26, '"');
    int moves = 0;
    for (const char *q = dashed + 26; q < end; q++) moves += *q == 'M';
    assert_int_equal(moves, 3);
    /* Linear Df axis covers the data with nice ticks (0..40). */
    assert_non_null(strstr(out, ">40</text>"));
    free(out);

    /* Ramp ends are distinct colours in #rrggbb form. */
    char a[8], b[8];
    ea_svg_ramp(0, 10, a);
    ea_svg_ramp(9, 10, b);
    assert_int_equal(strlen(a), 7);
    assert_string_not_equal(a, b);

    /* Saving: into a directory that does not exist fails cleanly; a good path works. */
    char *dir = test_tmpdir(), path[512];
    snprintf(path, sizeof path, "%s/nope/fig.svg", dir);
    assert_int_equal(ea_svg_save(s, path), EA_ERR_IO);
    printf("bad path: %s\n", ea_last_error());
    snprintf(path, sizeof path, "%s/fig.svg", dir);
    assert_int_equal(ea_svg_save(s, path), EA_OK);
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    assert_true(st.st_size > 1000);
    test_rmdir(dir);
    free(dir);
    ea_svg_free(s);
}

static void test_svg_empty_and_flat(void **state) {
    (void)state;
    /* Degenerate inputs still give a valid document: no panels, a panel without data, one point. */
    ea_svg *s;
    int p;
    char *out;
    assert_int_equal(ea_svg_init(&s, NULL, 3, 300, 200), EA_OK);
    assert_int_equal(ea_svg_render(s, &out, NULL), EA_OK);
    assert_non_null(strstr(out, "</svg>"));
    free(out);
    assert_int_equal(ea_svg_panel(s, NULL, NULL, NULL, EA_SVG_LOG_X | EA_SVG_LOG_Y, &p), EA_OK);
    assert_int_equal(ea_svg_panel(s, "one", NULL, NULL, 0, &p), EA_OK);
    double x = 5, y = 5;
    assert_int_equal(ea_svg_series(s, p, "pt", &x, &y, 1, NULL, EA_SVG_DOTTED, 1), EA_OK);
    assert_int_equal(ea_svg_panel_range(s, p, 0, 10, NAN, NAN), EA_OK);
    assert_int_equal(ea_svg_render(s, &out, NULL), EA_OK);
    assert_null(strstr(out, "nan"));
    assert_null(strstr(out, "inf"));
    assert_int_equal(count(out, "<circle"), 1);
    free(out);
    ea_svg_free(s);
    assert_int_equal(ea_svg_init(&s, "x", 0, 300, 200), EA_ERR_ARG);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_svg_render),
        cmocka_unit_test(test_svg_empty_and_flat),
    };
    return TEST_RUN(tests, NULL, NULL);
}
