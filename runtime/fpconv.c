// fpconv.c: lua-cjson 2.1.0's number conversions (fpconv_init, fpconv_g_fmt, fpconv_strtod)
// with exact fast paths in front of snprintf("%.14g") and strtod.
//
// Debian's liblua5.1-cjson.a keeps these three functions in a member of their own (fpconv.o),
// which lua_cjson.o references as undefined symbols. This file defines all three, so the
// linker resolves them here and never pulls Debian's fpconv.o out of the archive. The original
// formats every number with snprintf("%.14g"), ~3,000 instructions even for an integer, and
// that was the largest single cost of a JSON request. The fast paths below produce the same
// bytes as glibc for the values they accept (the proofs are next to them) and hand every other
// value to the original code, copied unchanged (locale handling included).
// spec/json_numbers_spec.lua compares this build against Debian's own cjson.so and against
// string.format for hundreds of thousands of values.
#include <assert.h>
#include <float.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// lua-cjson's fpconv.h: the caller always leaves this much room for one number.
#define FPCONV_G_FMT_BUFSIZE 32

// The prototypes lua_cjson.o was compiled against (its fpconv.h is not installed).
void fpconv_init(void);
int fpconv_g_fmt(char *str, double num, int precision);
double fpconv_strtod(const char *nptr, char **endptr);

// The fast paths need one correctly rounded IEEE double operation per step; x87's extended
// precision (FLT_EVAL_METHOD 2) would round twice, so there they are compiled out.
#if defined(FLT_EVAL_METHOD) && FLT_EVAL_METHOD == 0 && DBL_MANT_DIG == 53
#define FPCONV_FAST 1
#else
#define FPCONV_FAST 0
#endif

// Every power of ten up to 1e22 is an exact double (5^22 < 2^53).
static const double pow10_exact[23] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                       1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                       1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};

// From here to fpconv_g_fmt's fallback: lua-cjson 2.1.0's fpconv.c, unchanged but for layout.

// Lua CJSON assumes the locale is the same for all threads within a process and doesn't
// change after initialisation.
static char locale_decimal_point = '.';

// In theory multibyte decimal points are possible, but Lua CJSON only supports UTF-8 and
// known locales only have single byte decimal points ([.,]). localeconv() may not be thread
// safe and nl_langinfo() is not supported on some platforms, so snprintf() is used.
static void fpconv_update_locale(void) {
  char buf[8];

  snprintf(buf, sizeof(buf), "%g", 0.5);

  // Failing this test might imply the platform has a buggy dtoa implementation or wide
  // characters.
  if (buf[0] != '0' || buf[2] != '5' || buf[3] != 0) {
    fprintf(stderr, "Error: wide characters found or printf() bug.");
    abort();
  }

  locale_decimal_point = buf[1];
}

// A valid number character: [-+0-9a-yA-Y.] (e.g. -0.6e+5, infinity, 0xF0.F0pF0). Used to find
// the probable end of a number; strtod() finds the valid number inside it.
static inline int valid_number_character(char ch) {
  char lower_ch;

  if ('0' <= ch && ch <= '9') return 1;
  if (ch == '-' || ch == '+' || ch == '.') return 1;

  // Hex digits, exponent (e), base (p), "infinity", ...
  lower_ch = ch | 0x20;
  if ('a' <= lower_ch && lower_ch <= 'y') return 1;

  return 0;
}

// The size of the buffer a strtod locale conversion needs.
static int strtod_buffer_size(const char *s) {
  const char *p = s;

  while (valid_number_character(*p))
    p++;

  return p - s;
}

// The original fpconv_strtod: strtod(), through a copy with the locale's decimal point when
// that is not '.'.
static double strtod_locale(const char *nptr, char **endptr) {
  char localbuf[FPCONV_G_FMT_BUFSIZE];
  char *buf, *endbuf, *dp;
  int buflen;
  double value;

  // System strtod() is fine when decimal point is '.'.
  if (locale_decimal_point == '.') return strtod(nptr, endptr);

  buflen = strtod_buffer_size(nptr);
  if (!buflen) {
    // No valid characters found, standard strtod() return.
    *endptr = (char *)nptr;
    return 0;
  }

  // Duplicate number into buffer.
  if (buflen >= FPCONV_G_FMT_BUFSIZE) {
    // Handle unusually large numbers.
    buf = malloc(buflen + 1);
    if (!buf) {
      fprintf(stderr, "Out of memory");
      abort();
    }
  } else {
    // This is the common case.
    buf = localbuf;
  }
  memcpy(buf, nptr, buflen);
  buf[buflen] = 0;

  // Update decimal point character if found.
  dp = strchr(buf, '.');
  if (dp) *dp = locale_decimal_point;

  value = strtod(buf, &endbuf);
  *endptr = (char *)&nptr[endbuf - buf];
  if (buflen >= FPCONV_G_FMT_BUFSIZE) free(buf);

  return value;
}

// "fmt" must point to a buffer of at least 6 characters.
static void set_number_format(char *fmt, int precision) {
  int d1, d2, i;

  assert(1 <= precision && precision <= 14);

  // Create printf format (%.14g) from precision.
  d1 = precision / 10;
  d2 = precision % 10;
  fmt[0] = '%';
  fmt[1] = '.';
  i = 2;
  if (d1) fmt[i++] = '0' + d1;
  fmt[i++] = '0' + d2;
  fmt[i++] = 'g';
  fmt[i] = 0;
}

// The original fpconv_g_fmt: snprintf("%.<precision>g"), translating the locale's decimal
// point back to '.'. Assumes at least 32 characters available at str.
static int g_fmt_snprintf(char *str, double num, int precision) {
  char buf[FPCONV_G_FMT_BUFSIZE];
  char fmt[6];
  int len;
  char *b;

  set_number_format(fmt, precision);

  // Pass through when decimal point character is dot.
  if (locale_decimal_point == '.') return snprintf(str, FPCONV_G_FMT_BUFSIZE, fmt, num);

  // snprintf() to a buffer then translate for other decimal point characters.
  len = snprintf(buf, FPCONV_G_FMT_BUFSIZE, fmt, num);

  // Copy into target location. Translate decimal point if required.
  b = buf;
  do {
    *str++ = (*b == locale_decimal_point ? '.' : *b);
  } while (*b++);

  return len;
}

#if FPCONV_FAST
// "%.<p>g" for the values most JSON carries: zero, integers and short decimals.
//
// Let a = |num| and suppose an integer m < 10^p and k in 0..22 with m / 10^k == a, where the
// division (m and 10^k exact doubles) is correctly rounded. Then a is the double nearest the
// decimal v = m * 10^-k, so |a - v| <= ulp(a) / 2 <= a * 2^-53. printf rounds the exact value
// of a to p significant digits; the grid of p-digit decimals around a has spacing at least
// 10^(X - p) where 10^X <= v (the spacing one decade below, in case a < 10^X <= v), and
// a * 2^-53 < 10^(X+1) * 2^-53 < 10^(X - p) / 2 because 10^(p+1) < 2^52 for p <= 14. v has at
// most p significant digits, so it is on that grid and is the nearest grid point: printf's
// rounded value is exactly v (no tie is possible), with exponent X = digits(m) - 1 - k < p.
// When X >= -4, %g prints v in fixed notation with trailing zeros (and a bare point) removed:
// m's digits with a point k places from the right. Otherwise (X < -4) it would use an exponent,
// which is left to snprintf. Zero is "0" or "-0".
// Returns the length written (NUL included after it, as snprintf writes), or -1 to fall back.
static int g_fmt_fast(char *str, double num, int precision) {
  char digits[24];
  char *out = str;
  double a, limit, t;
  uint64_t m = 0;
  int k, n, i, found = 0;

  if (num == 0.0) {
    if (signbit(num)) *out++ = '-';
    *out++ = '0';
    *out = 0;
    return (int)(out - str);
  }
  a = num < 0 ? -num : num;
  limit = pow10_exact[precision];
  // Also false for NaN; infinity fails it too.
  if (!(a < limit && a >= 1e-5)) return -1;
  // k never needs to exceed precision + 3: digits(m) <= precision and X >= -4.
  for (k = 0; k <= precision + 4; k++) {
    t = a * pow10_exact[k];
    if (t >= limit) return -1;
    m = (uint64_t)(t + 0.5);
    if ((double)m / pow10_exact[k] == a) {
      found = 1;
      break;
    }
  }
  if (!found || m == 0 || (double)m >= limit) return -1;
  // m / 10^k and (m / 10) / 10^(k - 1) are the same rational, so the same double.
  while (k > 0 && m % 10 == 0) {
    m /= 10;
    k--;
  }
  n = 0;
  while (m) {
    digits[n++] = (char)('0' + m % 10);
    m /= 10;
  }
  // digits[] holds m's digits, least significant first; X = n - 1 - k.
  if (n - 1 - k < -4) return -1;
  if (num < 0) *out++ = '-';
  if (k >= n) {
    *out++ = '0';
    *out++ = '.';
    for (i = 0; i < k - n; i++)
      *out++ = '0';
    for (i = n - 1; i >= 0; i--)
      *out++ = digits[i];
  } else {
    for (i = n - 1; i >= k; i--)
      *out++ = digits[i];
    if (k > 0) {
      *out++ = '.';
      for (i = k - 1; i >= 0; i--)
        *out++ = digits[i];
    }
  }
  *out = 0;
  return (int)(out - str);
}

// strtod for [-]digits[.digits] not followed by an exponent, with at most 19 significant
// digits, a value of them <= 2^53 and at most 22 after the point: then the mantissa and 10^frac
// are exact doubles and one correctly rounded division gives the correctly rounded result
// (Clinger's fast path), which is what glibc's strtod returns. endptr is where strtod stops:
// the first character that cannot continue the number. Hex ("0x"), "1." and ".5", exponents,
// infinity and NaN, a '+' and long mantissas return 0 and are left to strtod.
static int strtod_fast(const char *s, char **endptr, double *value) {
  const char *p = s;
  uint64_t m = 0;
  int neg = 0, sig = 0, frac = 0;
  double v;

  if (*p == '-') {
    neg = 1;
    p++;
  }
  if (*p < '0' || *p > '9') return 0;
  if (p[0] == '0' && (p[1] == 'x' || p[1] == 'X')) return 0;
  // sig counts digits from the first non-zero one; checked before m could wrap around.
  for (; *p >= '0' && *p <= '9'; p++) {
    if (sig || *p != '0') sig++;
    if (sig > 19) return 0;
    m = m * 10 + (uint64_t)(*p - '0');
  }
  if (*p == '.') {
    p++;
    if (*p < '0' || *p > '9') return 0;
    for (; *p >= '0' && *p <= '9'; p++) {
      if (sig || *p != '0') sig++;
      if (sig > 19) return 0;
      m = m * 10 + (uint64_t)(*p - '0');
      frac++;
    }
  }
  if (*p == 'e' || *p == 'E' || frac > 22 || m > ((uint64_t)1 << 53)) return 0;
  v = (double)m;
  if (frac) v /= pow10_exact[frac];
  *value = neg ? -v : v;
  *endptr = (char *)p;
  return 1;
}
#endif

double fpconv_strtod(const char *nptr, char **endptr) {
#if FPCONV_FAST
  double v;
  if (strtod_fast(nptr, endptr, &v)) return v;
#endif
  return strtod_locale(nptr, endptr);
}

int fpconv_g_fmt(char *str, double num, int precision) {
#if FPCONV_FAST
  int len;
  if (precision >= 1 && precision <= 14 && (len = g_fmt_fast(str, num, precision)) >= 0) return len;
#endif
  return g_fmt_snprintf(str, num, precision);
}

void fpconv_init(void) {
  fpconv_update_locale();
}
