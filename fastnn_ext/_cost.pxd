# The cost model's thresholds (see _cost.h for what they are and why).
cdef extern from "_cost.h":
    enum:
        FASTNN_SERIAL_BELOW_ELEMENTWISE
        FASTNN_SERIAL_BELOW_EXP
        FASTNN_SERIAL_BELOW_MAC
        FASTNN_SERIAL_BELOW_GATE
        FASTNN_SERIAL_BELOW_RECURRENT
        FASTNN_SERIAL_BELOW_POOL
        FASTNN_SERIAL_BELOW_CONV
