/* placeholder: the ESAP module (issue 6) defines this API. */
#ifndef EA_ESAP_H
#define EA_ESAP_H
#endif
