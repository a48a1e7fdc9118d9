/* sentinel-broker: placeholder until the broker lands. */
#include <stdio.h>

int main(void)
{
    fprintf(stderr, "sentinel-broker: not built yet\n");
    return 1;
}
