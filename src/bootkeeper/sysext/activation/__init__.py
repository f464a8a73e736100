"""The parts of ``sysext activate`` (:mod:`bootkeeper.sysext.activate` runs them in order): what is
found (:mod:`.found`), the rounds that fit in the destination (:mod:`.space`), the copies made in one
pass (:mod:`.copying`) and judged (:mod:`.judging`) in forked workers (:mod:`.pool`), then placed or
removed (:mod:`.place`), each image's outcome and the report (:mod:`.outcome`)."""
