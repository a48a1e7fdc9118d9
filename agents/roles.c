/* The product roles served by sentinel-agent, one line each; a role's code lives in
 * agents/<agent>/<role>.c. Test roles live under tests/roles/ (sentinel-test-agent). */
#include "sentinel/sn_agent.h"

extern const sn_role_t local_deployer_role;
extern const sn_role_t build_validator_role;
extern const sn_role_t infraguard_role;
extern const sn_role_t buildpilot_role;
extern const sn_role_t deployment_watcher_role;
extern const sn_role_t autoheal_executor_role;
extern const sn_role_t notifier_role;
extern const sn_role_t gateway_role;

const sn_role_t *const sn_roles[] = {
    &local_deployer_role,
    &build_validator_role,
    &infraguard_role,
    &buildpilot_role,
    &deployment_watcher_role,
    &autoheal_executor_role,
    &notifier_role,
    &gateway_role,
    NULL,
};
