/* The product roles served by sentinel-agent. Each agent's roles live in agents/<agent>/
 * and are listed here; the foundation ships none (test roles live under tests/roles/). */
#include "sentinel/sn_agent.h"

const sn_role_t *const sn_roles[] = {NULL};
