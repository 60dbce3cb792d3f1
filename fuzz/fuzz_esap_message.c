/* libFuzzer target: the ESAP spectrum message parser (JSON from another agent). Oracle: an
 * accepted message is consistent (d and K in range, eigenvalues finite, non-negative, descending,
 * summing to 1, C(k) monotone) and survives a round trip: serialize, parse again, get the same
 * doubles bit for bit. Every refusal names the message. */
#include <math.h>

#include "fuzz_util.h"

#define NAME "fuzz-message"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *buf = malloc(size ? size : 1); /* exactly size bytes: nothing after them to lean on */
    if (size) memcpy(buf, data, size);
    ea_esap_spectrum s;
    memset(&s, 0, sizeof s);
    ea_status st = ea_esap_spectrum_parse(buf, size, NAME, &s);
    free(buf);
    if (st != EA_OK) {
        FUZZ_CHECK(strstr(ea_last_error(), NAME) != NULL, "message not named: %s", ea_last_error());
        return 0;
    }
    FUZZ_CHECK(s.d >= 1 && s.d <= EA_ESAP_MAX_DIM && s.K >= 1 && s.K <= s.d, "d %d K %d", s.d, s.K);
    double sum = 0;
    for (int i = 0; i < s.d; i++) {
        FUZZ_CHECK(isfinite(s.eigenvalues[i]) && s.eigenvalues[i] >= 0, "eigenvalue %d = %g", i, s.eigenvalues[i]);
        if (i) FUZZ_CHECK(s.eigenvalues[i] <= s.eigenvalues[i - 1], "eigenvalues not descending at %d", i);
        sum += s.eigenvalues[i];
    }
    FUZZ_CHECK(fabs(sum - 1) < 1e-6, "eigenvalues sum to %.17g", sum);
    for (int k = 1; k < s.K; k++) FUZZ_CHECK(s.ck[k] >= s.ck[k - 1], "C(k) decreases at %d", k);
    FUZZ_CHECK(isfinite(s.df) && s.df >= 1 - 1e-9 && s.df <= s.d + 1e-9, "df %g for d %d", s.df, s.d);

    char *json = NULL;
    size_t len = 0;
    FUZZ_CHECK(ea_esap_spectrum_to_json(&s, &json, &len) == EA_OK, "to_json: %s", ea_last_error());
    ea_esap_spectrum t;
    memset(&t, 0, sizeof t);
    FUZZ_CHECK(ea_esap_spectrum_parse(json, len, NAME, &t) == EA_OK, "own output refused: %s", ea_last_error());
    FUZZ_CHECK(t.d == s.d && t.K == s.K && !strcmp(t.fingerprint, s.fingerprint) && !strcmp(t.site, s.site) &&
                   memcmp(t.eigenvalues, s.eigenvalues, sizeof(double) * (size_t)s.d) == 0 &&
                   memcmp(t.ck, s.ck, sizeof(double) * (size_t)s.K) == 0 && memcmp(&t.df, &s.df, sizeof s.df) == 0,
               "round trip changed the message");
    free(json);
    ea_esap_spectrum_free(&t);
    ea_esap_spectrum_free(&s);
    return 0;
}
