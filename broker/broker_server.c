/* The broker actor: placeholder until it lands. */
int broker_placeholder(void);
int broker_placeholder(void)
{
    return 0;
}
