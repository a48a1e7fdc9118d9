/* ULIDs and random values. The random part of a ULID is incremented within one
 * millisecond, so ids made by one process sort in creation order. */
#include "sentinel/sn_id.h"

#include <pthread.h>
#include <string.h>
#include <sys/random.h>

static const char s_alphabet[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";
static pthread_mutex_t s_mutex = PTHREAD_MUTEX_INITIALIZER;
static int64_t s_last_ms = -1;
static uint8_t s_last_rand[10];

void sn_random_bytes(void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        SN_ASSERT(n > 0);
        p += n;
        len -= (size_t)n;
    }
}

uint64_t sn_random_u64(void)
{
    uint64_t v = 0;
    while (v == 0)
        sn_random_bytes(&v, sizeof v);
    return v;
}

void sn_random_hex(char *out, size_t len)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t b[64];
    SN_ASSERT(len <= sizeof b);
    sn_random_bytes(b, len);
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = hex[b[i] >> 4];
        out[2 * i + 1] = hex[b[i] & 15];
    }
    out[2 * len] = '\0';
}

void sn_id_new(char out[SN_ID_LEN + 1])
{
    uint8_t bin[16];
    int64_t now = sn_wall_ms();
    pthread_mutex_lock(&s_mutex);
    if (now <= s_last_ms) {
        now = s_last_ms;
        for (int i = 9; i >= 0; i--)
            if (++s_last_rand[i] != 0)
                break;
    } else {
        s_last_ms = now;
        sn_random_bytes(s_last_rand, sizeof s_last_rand);
        s_last_rand[0] &= 0x7f; /* room to increment within the millisecond */
    }
    for (int i = 0; i < 6; i++)
        bin[i] = (uint8_t)((uint64_t)now >> (40 - 8 * i));
    memcpy(bin + 6, s_last_rand, 10);
    pthread_mutex_unlock(&s_mutex);

    /* 128 bits -> 26 chars of 5 bits, the first char carrying 3 bits. */
    int bit = -2; /* 130 bits of output, 2 leading zero bits */
    for (int c = 0; c < SN_ID_LEN; c++) {
        unsigned v = 0;
        for (int k = 0; k < 5; k++, bit++) {
            v <<= 1;
            if (bit >= 0 && (bin[bit / 8] >> (7 - bit % 8)) & 1)
                v |= 1;
        }
        out[c] = s_alphabet[v];
    }
    out[SN_ID_LEN] = '\0';
}

static int s_decode(char c)
{
    const char *p = strchr(s_alphabet, c);
    return (c && p) ? (int)(p - s_alphabet) : -1;
}

bool sn_id_is_valid(const char *s)
{
    if (!s || strlen(s) != SN_ID_LEN || s[0] > '7')
        return false;
    for (int i = 0; i < SN_ID_LEN; i++)
        if (s_decode(s[i]) < 0)
            return false;
    return true;
}

int64_t sn_id_time_ms(const char *s)
{
    if (!sn_id_is_valid(s))
        return -1;
    int64_t t = 0;
    for (int i = 0; i < 10; i++)
        t = t * 32 + s_decode(s[i]);
    return t;
}
